import sys

from locallab_gguf.cli import main

sys.exit(main())
