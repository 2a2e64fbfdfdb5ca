"""How the model commands find a server and its key, and how `ps` words memory and expiry."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from locallab_gguf.cli.run import prompt_of
from locallab_gguf.cli.running import processor, until
from locallab_gguf.cli.server_client import client_key, server_url
from locallab_gguf.errors import InvalidRequest
from locallab_gguf.settings import Settings


def test_the_url_is_the_flag_else_the_variable_else_where_serve_binds() -> None:
    settings = Settings(port=8123)
    assert server_url(settings, {}, "http://box:9000/") == "http://box:9000"
    assert server_url(settings, {"LOCALLAB_URL": "http://other:1/"}, None) == "http://other:1"
    assert server_url(settings, {}, None) == "http://127.0.0.1:8123"
    # A server bound to every address is reached on loopback.
    assert server_url(Settings(host="0.0.0.0"), {}, None) == "http://127.0.0.1:8000"
    assert server_url(Settings(host="::"), {}, None) == "http://[::1]:8000"
    assert server_url(Settings(host="10.0.0.5"), {}, None) == "http://10.0.0.5:8000"


def test_the_key_is_the_flag_else_the_variable_else_an_admin_key_of_the_servers() -> None:
    keys = Settings(api_keys=("user:usr", "admin:adm"))
    assert client_key(keys, {"LOCALLAB_API_KEY": "env"}, "flag") == "flag"
    assert client_key(keys, {"LOCALLAB_API_KEY": "env"}, None) == "env"
    assert client_key(keys, {}, None) == "adm"
    assert client_key(Settings(api_keys=("user:usr", "other")), {}, None) == "usr"
    assert client_key(Settings(), {}, None) is None


def test_processor_says_where_the_memory_is() -> None:
    assert processor(1000, 0) == "100% CPU"
    assert processor(1000, 1000) == "100% GPU"
    assert processor(1000, 700) == "30%/70% CPU/GPU"


def test_until_says_when_an_idle_model_is_unloaded() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp()
    assert until("2318-01-01T00:00:00Z", now) == "until unloaded"
    assert until("2026-12-07T12:04:30Z", now) == "in 5 min"
    assert until("2026-12-07T12:00:20Z", now) == "in 20 s"
    assert until("2026-12-07T11:59:00Z", now) == "now"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_prompt_comes_from_stdin_when_it_is_a_dash_or_piped() -> None:
    assert prompt_of("-", io.StringIO("from a pipe\n")) == "from a pipe\n"
    assert prompt_of(None, io.StringIO("piped")) == "piped"
    assert prompt_of("given", io.StringIO("ignored")) == "given"
    assert prompt_of(None, _Terminal()) is None  # at a terminal: the chat
    with pytest.raises(InvalidRequest, match="standard input is empty"):
        prompt_of("-", io.StringIO(" \n"))
