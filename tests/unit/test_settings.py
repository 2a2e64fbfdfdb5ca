"""Settings come from defaults < LOCALLAB_* environment < flags, and --help shows them all."""

from __future__ import annotations

import pytest

from locallab_gguf.cli.main import build_parser, main
from locallab_gguf.errors import ConfigError
from locallab_gguf.setting_flags import flag_specs, load_settings
from locallab_gguf.settings import Settings, env_name


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
    specs = flag_specs()
    assert [spec.name for spec in specs] == list(Settings.__struct_fields__)
    for spec in specs:
        assert spec.flag in text
        assert env_name(spec.name) in text


def test_invalid_flag_value_exits_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--parallel", "0", "--port", "1"]) == 2
    assert "parallel" in capsys.readouterr().err


def test_list_settings_repeat_their_flag_and_split_their_environment_variable() -> None:
    args = build_parser().parse_args(
        ["serve", "--api-key", "k1", "--api-key", "k2", "--cors-origin", "https://a.example"]
    )
    flags = {name: getattr(args, name) for name in Settings.__struct_fields__}
    env = {
        "LOCALLAB_API_KEYS": "e1, e2,,",
        "LOCALLAB_TRUSTED_PROXIES": "10.0.0.0/8,192.168.1.1",
    }
    settings = load_settings(env, flags)
    assert settings.api_keys == ("k1", "k2")  # the flags replace the environment's list
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")
    assert settings.cors_origins == ("https://a.example",)
    assert load_settings(env, {}).api_keys == ("e1", "e2")
    assert load_settings({}, {}).api_keys == ()


def test_rate_limit_settings_from_flags_and_environment() -> None:
    args = build_parser().parse_args(["serve", "--no-rate-limit", "--rate-limit-fail", "closed"])
    flags = {name: getattr(args, name) for name in Settings.__struct_fields__}
    settings = load_settings({"LOCALLAB_BURST": "3"}, flags)
    assert (settings.rate_limit, settings.rate_limit_fail, settings.burst) == (False, "closed", 3)
    assert load_settings({"LOCALLAB_RATE_LIMIT": "false"}, {}).rate_limit is False
    assert load_settings({}, {}).requests_per_minute == 60
    store = load_settings({"LOCALLAB_RATE_LIMIT_STORE": "redis://127.0.0.1:6379/0"}, {})
    assert store.rate_limit_store == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="rate_limit_store"):
        load_settings({"LOCALLAB_RATE_LIMIT_STORE": "memcached://x"}, {})


def test_residency_settings_from_flags_and_environment() -> None:
    args = build_parser().parse_args(
        ["serve", "--max-models", "2", "--keep-alive", "90s", "--no-autoload"]
    )
    flags = {name: getattr(args, name) for name in Settings.__struct_fields__}
    settings = load_settings({"LOCALLAB_ROOM_WAIT": "5"}, flags)
    assert (settings.max_models, settings.keep_alive_seconds) == (2, 90.0)
    assert (settings.autoload, settings.room_wait) == (False, 5.0)
    defaults = load_settings({}, {})
    assert (defaults.max_models, defaults.keep_alive_seconds, defaults.autoload) == (
        None,
        300.0,
        True,
    )
    assert load_settings({"LOCALLAB_KEEP_ALIVE": "-1"}, {}).keep_alive_seconds == float("inf")
    with pytest.raises(ConfigError, match="--keep-alive: 'soon' is not a duration"):
        load_settings({"LOCALLAB_KEEP_ALIVE": "soon"}, {})
    with pytest.raises(ConfigError, match="max_models"):
        load_settings({"LOCALLAB_MAX_MODELS": "0"}, {})


def test_the_deterministic_mode_refuses_a_unified_kv_pool(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = load_settings({"LOCALLAB_KV_LAYOUT": "unified"}, {"flash_attn": "off"})
    assert (settings.kv_layout, settings.flash_attn) == ("unified", "off")
    with pytest.raises(ConfigError, match="--deterministic needs --kv-layout per-slot"):
        load_settings({"LOCALLAB_KV_LAYOUT": "unified"}, {"deterministic": True})
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--flash-attn", "sometimes"])
    assert exited.value.code == 2
    assert "--flash-attn" in capsys.readouterr().err
