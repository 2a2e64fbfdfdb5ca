"""Settings come from defaults < LOCALLAB_* environment < flags, and --help shows them all."""

from __future__ import annotations

import pytest

from locallab_gguf.cli import build_parser, main
from locallab_gguf.errors import ConfigError
from locallab_gguf.settings import Settings, env_name, load_settings


def test_flags_beat_environment_beats_defaults() -> None:
    settings = load_settings(
        {"LOCALLAB_PORT": "9000", "LOCALLAB_THREADS": "3", "LOCALLAB_CTX": "2048"},
        {"port": 9100, "threads": None},
    )
    assert settings.port == 9100  # the flag
    assert settings.threads == 3  # the environment
    assert settings.ctx == 2048
    assert settings.host == "127.0.0.1"  # the default: loopback unless told otherwise


def test_bad_environment_value_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="parallel"):
        load_settings({"LOCALLAB_PARALLEL": "0"}, {})
    with pytest.raises(ConfigError, match="port"):
        load_settings({"LOCALLAB_PORT": "http"}, {})


def test_help_documents_every_setting_with_its_environment_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in Settings.__struct_fields__:
        assert "--" + name.replace("_", "-") in text
        assert env_name(name) in text


def test_invalid_flag_value_exits_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--parallel", "0", "--port", "1"]) == 2
    assert "parallel" in capsys.readouterr().err
