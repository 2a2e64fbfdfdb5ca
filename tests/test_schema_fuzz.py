"""No input gets a 500: schemathesis sends what the server's own OpenAPI document allows,
and what it nearly allows, to every route but /models/load and /models/unload.

The check: no response is a 5xx. (Whether the document states every constraint the handlers
apply, so that what it allows is served and what it refuses is a 4xx, is not checked here:
the Ollama and Anthropic bodies and the tool-call fields are not yet described that closely.)
The examples are bounded (per route, and by a time budget that a busy machine spends on
fewer of them) and the seed is fixed; `tests/schema_fuzz/hooks.py` keeps each generation to one
token.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.subprocess_server import serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ST = Path(sys.executable).parent / "st"
FUZZ = Path(__file__).resolve().parent / "schema_fuzz"
EXAMPLES_PER_ROUTE = 10
SECONDS = 60
SEED = 20261129


def test_no_input_gets_a_server_error(tmp_path: Path) -> None:
    # A 64-token context and one new token by default keep every generation short.
    with serve(tmp_path, "--ctx", "64", "--parallel", "4", "--default-max-tokens", "1") as served:
        run = subprocess.run(
            [
                str(ST),
                "--no-color",
                "--config-file",
                str(FUZZ / "schemathesis.toml"),
                "run",
                f"{served.url}/schema/openapi.json",
                "--exclude-path",
                "/models/load",
                "--exclude-path",
                "/models/unload",
                "--checks",
                "not_a_server_error",
                "--phases",
                "coverage,fuzzing",
                "--max-examples",
                str(EXAMPLES_PER_ROUTE),
                "--seed",
                str(SEED),
                "--max-time",
                str(SECONDS),
                "--workers",
                "1",
                "--request-timeout",
                "120",
                "--generation-database",
                "none",
            ],
            cwd=tmp_path,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "SCHEMATHESIS_HOOKS": "tests.schema_fuzz.hooks",
            },
            capture_output=True,
            text=True,
            timeout=SECONDS + 300,
        )
        log = served.output()
    assert run.returncode == 0, run.stdout[-30000:] + run.stderr[-5000:]
    assert not re.search(r"status=5\d\d", log), log[-5000:]
    assert "Traceback" not in log, log[-5000:]
