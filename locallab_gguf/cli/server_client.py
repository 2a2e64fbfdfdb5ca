"""How a command reaches a running server: its address, its key, and JSON over HTTP.

`ps`, `stop`, `run` and `chat --url` talk to a server started apart with `locallab-gguf
serve`. Its address is --url, else LOCALLAB_URL, else the host and port that `serve` would
bind with the same settings (LOCALLAB_HOST, LOCALLAB_PORT), reached on loopback when it binds
every address. Its key is --api-key, else LOCALLAB_API_KEY, else the keys `serve` reads
(LOCALLAB_API_KEYS), an admin one first: the shell that started the server can manage it.

On the standard library alone, so that a command never waits for the web stack to import.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from locallab_gguf.errors import ServerRefused, ServerUnreachable
from locallab_gguf.settings import Settings

URL_VARIABLE = "LOCALLAB_URL"
KEY_VARIABLE = "LOCALLAB_API_KEY"
_ADMIN_PREFIX = "admin:"
_USER_PREFIX = "user:"
_EVERY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def server_url(settings: Settings, env: Mapping[str, str], given: str | None) -> str:
    if given:
        return given.rstrip("/")
    if env.get(URL_VARIABLE):
        return env[URL_VARIABLE].rstrip("/")
    host = _EVERY_ADDRESS.get(settings.host, settings.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def client_key(settings: Settings, env: Mapping[str, str], given: str | None) -> str | None:
    """The key to send; None when none is configured (a server without keys needs none)."""
    if given:
        return given
    if env.get(KEY_VARIABLE):
        return env[KEY_VARIABLE]
    admin = [key for key in settings.api_keys if key.startswith(_ADMIN_PREFIX)]
    for entry in admin or list(settings.api_keys):
        return entry.removeprefix(_ADMIN_PREFIX).removeprefix(_USER_PREFIX).strip()
    return None


class ServerClient:
    """JSON requests to one server; its errors become ServerRefused (with the server's own
    message and status) or ServerUnreachable (with what to do about it)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 600,
        *,
        unreachable_hint: str = "start one with `locallab-gguf serve`, or name another "
        "with --url or LOCALLAB_URL",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.unreachable_hint = unreachable_hint

    def get_json(self, path: str) -> Any:
        with self.open("GET", path) as response:
            return json.load(response)

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        with self.open("POST", path, body) as response:
            return json.load(response)

    def open(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Accept": "application/json, text/event-stream"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.base_url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
            method=method,
        )
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise ServerRefused(
                f"{exc.code}: {_error_message(exc)}{_key_hint(exc.code, self.api_key)}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnreachable(
                f"cannot reach {self.base_url} ({reason}); {self.unreachable_hint}"
            ) from exc


def _key_hint(status: int, key: str | None) -> str:
    if status == 401:
        given = "the key given is not one of its keys" if key else "no key was given"
        return f" ({given}: pass --api-key or set {KEY_VARIABLE})"
    if status == 403:
        return f" (this needs an admin key: pass one with --api-key or {KEY_VARIABLE})"
    return ""


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())
    except ValueError:
        return str(error.reason)
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
        if "detail" in body:
            return str(body["detail"])
    return str(error.reason)
