import sys

from locallab_gguf.cli.main import main

sys.exit(main())
