"""One access-log line and one set of request metrics per request.

`RequestObserver` is the outermost middleware: it sees every routed request, including those
the rate limit or the key check refuse (their errors pass through it on their way to the
exception handlers, so it reads the status off the error). Requests that match no route never
reach middleware; the app's `before_send` hook `observe_unrouted` records those.

Generation routes add their token counts to the request's `RequestRecord` (see
`metered_stream.py`), which lives in the ASGI scope's state for the request's lifetime.

A client that hangs up while its body is being read is a 499 (nginx's "client closed
request"), and one the server cut off for sending its body too slowly (see `cli/http_guard.py`,
which marks the scope with READ_TIMED_OUT) a 408: neither is a server error. In the text
format, a value with a space, quote, `=` or anything unprintable is written as a JSON string,
so a client-supplied value cannot pose as another field.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from locallab_gguf.api.common.errors import status_of
from locallab_gguf.errors import ClientDisconnected, LocalLabError, RequestTimedOut
from locallab_gguf.serving.metrics import UNMATCHED_ROUTE, Metrics

access_log = logging.getLogger("locallab_gguf.access")

RECORD_KEY = "locallab_gguf.request_record"
# Set in a request's scope state by the HTTP server when it cut off a body sent too slowly.
READ_TIMED_OUT = "locallab_gguf.read_timed_out"

ClientOf = Callable[[Scope], str]


class RequestRecord:
    """What the access log says about one request; routes add tokens as they learn them."""

    __slots__ = (
        "client",
        "completion_tokens",
        "method",
        "path",
        "prompt_tokens",
        "route",
        "started",
        "status",
        "user",
    )

    def __init__(self, client: str, method: str, route: str, path: str, started: float) -> None:
        self.client = client
        self.method = method
        self.route = route
        self.path = path
        self.started = started
        self.status = 500  # until a response starts: a handler that dies sends nothing else
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.user: str | None = None  # what an OpenAI client sent as `user`

    def fields(self, latency_seconds: float | None) -> dict[str, Any]:
        return {
            "client": self.client,
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "status": self.status,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": None if latency_seconds is None else round(latency_seconds * 1000, 1),
            "user": self.user,
        }


def record_of(scope: Scope) -> RequestRecord | None:
    record = scope.get("state", {}).get(RECORD_KEY)
    return record if isinstance(record, RequestRecord) else None


class RequestObserver(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(
        self,
        metrics: Metrics,
        client_of: ClientOf,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.client_of = client_of
        self.clock = clock

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        record = RequestRecord(
            client=self.client_of(scope),
            method=str(scope.get("method", "")),
            route=scope.get("path_template") or scope["path"],
            path=scope["path"],
            started=self.clock(),
        )
        scope["state"][RECORD_KEY] = record

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        body_read = False

        async def receive_observed() -> ReceiveMessage:
            nonlocal body_read
            message = await receive()
            if message["type"] == "http.request":
                body_read = not message.get("more_body", False)
            elif message["type"] == "http.disconnect" and not body_read:
                # Litestar would answer a body cut short with a 500.
                if scope["state"].get(READ_TIMED_OUT):
                    raise RequestTimedOut("the request body did not arrive in time")
                raise ClientDisconnected("the client disconnected while sending its request")
            return message

        try:
            await next_app(scope, receive_observed, send_observed)
        except Exception as exc:
            # The exception handlers, outside every middleware, answer it with this status.
            record.status = _status_for(exc)
            raise
        finally:
            self._done(record, self.clock() - record.started)

    async def observe_unrouted(self, message: Message, scope: Scope) -> None:
        """A `before_send` hook: records responses that no route (so no middleware) saw."""
        if message["type"] != "http.response.start" or record_of(scope) is not None:
            return
        record = RequestRecord(
            client=self.client_of(scope),
            method=str(scope.get("method", "")),
            route=UNMATCHED_ROUTE,
            path=scope.get("path", ""),
            started=self.clock(),
        )
        record.status = message["status"]
        self._done(record, None)

    def _done(self, record: RequestRecord, seconds: float | None) -> None:
        self.metrics.record_response(record.route, record.method, record.status, seconds)
        fields = record.fields(seconds)
        access_log.info(
            " ".join(
                f"{name}={_logfmt(value)}" for name, value in fields.items() if value is not None
            ),
            extra={"fields": fields},
        )


def _logfmt(value: object) -> str:
    text = str(value)
    if text and text.isprintable() and not any(char in text for char in _NEEDS_QUOTES):
        return text
    return json.dumps(text)


_NEEDS_QUOTES = frozenset(' "=\\')


def _status_for(exc: Exception) -> int:
    if isinstance(exc, LocalLabError):
        return status_of(exc)
    if isinstance(exc, HTTPException):
        return exc.status_code
    return 500
