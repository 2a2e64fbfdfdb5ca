"""No input gets a 500, and the OpenAPI document states what the server really accepts:
schemathesis sends what the server's own document allows, and what it nearly allows, to
every route but /models/load and /models/unload.

The checks: no response is a 5xx; a body the document allows is served (or meets a state of
the server, see schema_fuzz/schemathesis.toml) and one it refuses is refused; every status,
content type and body answered is one the document lists. The examples are bounded (per route,
and by a time budget that a busy machine spends on fewer of them) and the seed is fixed;
`tests/e2e/schema_fuzz/hooks.py` keeps each generation to one token, and makes the bodies the
document allows meet the rules it states only in words (ids of earlier tool calls), and
record every answer's body, which must show no path of the server (its checkout, the home
directory, the model cache or registry). The server runs `--offline`: an unreachable hub
would answer 504 for every hub id and hide what lies behind it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from locallab_gguf.models.registry import default_models_file, load_registry
from tests.e2e.schema_fuzz.hooks import BODIES_FILE, EMBEDDING_MODEL, RERANKER_MODEL, SERVED_MODEL
from tests.support.subprocess_server import serve
from tests.support.tiny_encoders import write_tiny_bert
from tests.support.two_models import hub_cache_with

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ST = Path(sys.executable).parent / "st"
FUZZ = Path(__file__).resolve().parent / "schema_fuzz"
EXAMPLES_PER_ROUTE = 10
SECONDS = 60
SEED = 20261129
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "response_schema_conformance",
)


TINY_REPO = "locallab-tests/tiny-bert-GGUF"


def _models(tmp_path: Path) -> list[str]:
    """The default model, and tiny embedding and reranker models for the encoder routes."""
    default = load_registry(default_models_file()).get(SERVED_MODEL)
    encoders = {
        (TINY_REPO, "embed.gguf"): write_tiny_bert(tmp_path / "embed.gguf"),
        (TINY_REPO, "rerank.gguf"): write_tiny_bert(tmp_path / "rerank.gguf", reranker=True),
    }
    cache = hub_cache_with(tmp_path / "hub", encoders)
    models = tmp_path / "models.toml"
    models.write_text(
        f"""
default = "{SERVED_MODEL}"

[models.{SERVED_MODEL}]
name = "{default.name}"
repo = "{default.repo}"
file = "{default.file}"
sha256 = "{default.sha256}"
package = "{default.package}"

[models.{EMBEDDING_MODEL}]
name = "A tiny BERT embedding model"
repo = "{TINY_REPO}"
file = "embed.gguf"
kind = "embedding"
min_dimensions = 1

[models.{RERANKER_MODEL}]
name = "A tiny BERT reranker"
repo = "{TINY_REPO}"
file = "rerank.gguf"
kind = "reranker"
"""
    )
    return ["--models-file", str(models), "--cache-dir", str(cache), "--offline"]


def test_no_input_gets_a_server_error_and_the_schema_says_what_is_served(tmp_path: Path) -> None:
    # A 64-token context and one new token by default keep every generation short.
    flags = ("--ctx", "64", "--parallel", "4", "--default-max-tokens", "1", *_models(tmp_path))
    bodies = tmp_path / "bodies.txt"
    with serve(tmp_path, *flags) as served:
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
                ",".join(CHECKS),
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
                "SCHEMATHESIS_HOOKS": "tests.e2e.schema_fuzz.hooks",
                BODIES_FILE: str(bodies),
            },
            capture_output=True,
            text=True,
            timeout=SECONDS + 300,
        )
        log = served.output()
    assert run.returncode == 0, run.stdout[-30000:] + run.stderr[-5000:]
    assert not re.search(r"status=5\d\d", log), log[-5000:]
    assert "Traceback" not in log, log[-5000:]
    # No answer shows where the server lies: the checkout, the home directory, the model
    # cache and registry (both under tmp_path).
    answered = bodies.read_text(encoding="utf-8").splitlines()
    assert len(answered) > 100, answered[-5:]
    for place in (str(ROOT), str(Path.home()), str(tmp_path)):
        showing = [line for line in answered if place in line]
        assert not showing, showing[:5]
