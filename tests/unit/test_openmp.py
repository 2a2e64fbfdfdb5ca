"""OpenMP's spin count is set for serving, unless the user set one."""

from __future__ import annotations

import subprocess
import sys

from locallab_gguf.openmp import SPIN_COUNT, tune_for_serving


def test_the_spin_count_is_set_when_the_user_did_not() -> None:
    environ: dict[str, str] = {}
    tune_for_serving(environ)
    assert environ == {"GOMP_SPINCOUNT": SPIN_COUNT}


def test_the_users_own_spin_count_is_kept() -> None:
    environ = {"GOMP_SPINCOUNT": "5"}
    tune_for_serving(environ)
    assert environ == {"GOMP_SPINCOUNT": "5"}


def test_the_cli_does_not_load_llama_cpp_before_tuning_it() -> None:
    # libgomp reads its environment when it loads: the CLI must not import llama.cpp first.
    code = "import sys, locallab_gguf.cli.main; print('llama_cpp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False"
