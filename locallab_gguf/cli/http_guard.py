"""uvicorn's HTTP/1.1 protocol (h11) with the limits it lacks: read deadlines and a
connection cap.

uvicorn times out idle kept-alive connections only. A client that connects and sends part
of its headers, or part of its body, and then waits holds a connection (and a file
descriptor) for as long as it likes; enough of them exhaust the process's descriptors, and
then nobody is served. Here:

- the headers of a request must be complete within `header_timeout` seconds of its first
  byte (of the connection, for its first request), and its body within `body_timeout`
  seconds of its headers; a client that is late is answered 408 and cut off;
- beyond `max_connections` open connections, a new one is answered 503 at once and closed
  after a short linger (it never reaches the app).

The deadlines live in the protocol because nothing above it sees a request before its
headers are complete.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import resource
from typing import Any, ClassVar

import h11
import msgspec
from uvicorn.protocols.http.h11_impl import H11Protocol

from locallab_gguf.api.common.middleware.request_log import READ_TIMED_OUT

log = logging.getLogger("locallab_gguf.connections")

# Descriptors kept for what is not a client connection: the model file, the worker's pipes,
# log files, a Redis connection, the listening socket.
RESERVED_DESCRIPTORS = 256
# How long a refused connection may stay open for its client to read the 503: closing at
# once, with its request unread, would reset the connection before the 503 is read.
REFUSAL_LINGER_SECONDS = 1.0


class ConnectionLimits(msgspec.Struct, frozen=True, kw_only=True):
    header_timeout: float
    body_timeout: float
    max_connections: int


class ReadPhase(enum.Enum):
    """What a connection waits for from its client, and under which deadline."""

    NOTHING = "nothing"  # the app is answering, or the connection idles kept alive
    HEADERS = "headers"
    BODY = "body"


def _plain_response(status: int, reason: str, text: str, *extra: str) -> bytes:
    body = text.encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: text/plain; charset=utf-8",
        f"content-length: {len(body)}",
        "connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


TOO_SLOW = _plain_response(408, "Request Timeout", "the request did not arrive in time\n")
TOO_MANY = _plain_response(
    503,
    "Service Unavailable",
    "the server has as many connections open as it accepts; retry shortly\n",
    "retry-after: 1",
)


class GuardedH11Protocol(H11Protocol):
    """One client connection. `limits` is set on the subclass that `guarded_protocol` makes."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = ReadPhase.NOTHING
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.server_state.connections) >= self.limits.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._follow_reads()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped, so that closing does not reset the 503
        super().data_received(data)
        self._follow_reads()

    def eof_received(self) -> None:
        # The client is done sending; a refused connection has nothing more to say.
        if self._refused:
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_reads()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_phase(ReadPhase.NOTHING)
        if self._refused:
            return
        super().connection_lost(exc)

    def _follow_reads(self) -> None:
        """Start, keep or stop the read deadline as the client's side of h11 moved."""
        if self.transport.is_closing():
            phase = ReadPhase.NOTHING
        elif self.conn.their_state is h11.SEND_BODY:
            phase = ReadPhase.BODY
        elif self.conn.their_state is h11.IDLE and self.timeout_keep_alive_task is None:
            # Idle with no keep-alive timer: a new connection, or the first bytes of the next
            # request arrived (they stop uvicorn's keep-alive timer).
            phase = ReadPhase.HEADERS
        else:
            phase = ReadPhase.NOTHING
        self._set_phase(phase)

    def _set_phase(self, phase: ReadPhase) -> None:
        if phase is self._phase:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is ReadPhase.HEADERS:
            self._deadline = self.loop.call_later(self.limits.header_timeout, self._too_slow)
        elif phase is ReadPhase.BODY:
            self._deadline = self.loop.call_later(self.limits.body_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        phase, self._phase = self._phase, ReadPhase.NOTHING
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if phase is ReadPhase.BODY:
            if cycle is not None and not cycle.response_complete:
                # The app waits for the body: it hears that the client is gone, and why.
                cycle.scope.setdefault("state", {})[READ_TIMED_OUT] = True
                cycle.disconnected = True
                cycle.message_event.set()
            answer = cycle is None or not cycle.response_started
            flag = "--body-timeout"
        else:
            # A connection that never sent a byte gets no answer, only a close.
            answer = bool(self.conn.trailing_data[0])
            flag = "--header-timeout"
        if answer:
            self.transport.write(TOO_SLOW)
        log.warning(
            "closed a connection whose client took longer than %s to send its %s",
            flag,
            phase.value,
        )
        self.transport.close()

    def _refuse(self, transport: asyncio.Transport) -> None:
        self._refused = True
        self.transport = transport
        transport.write(TOO_MANY)
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(REFUSAL_LINGER_SECONDS, transport.close)
        log.warning(
            "refused a connection with 503: %d are open, as many as --max-connections allows",
            self.limits.max_connections,
        )


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """The protocol class to give uvicorn.Config(http=...)."""
    return type("GuardedH11", (GuardedH11Protocol,), {"limits": limits})


def ensure_descriptors(limits: ConnectionLimits) -> None:
    """Raise the soft limit on open files so that max_connections fit beside the rest; say so
    if the hard limit does not allow it (connections beyond it then fail to be accepted)."""
    wanted = limits.max_connections + RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if raised > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < wanted:
        log.warning(
            "this process may open %d files; %d connections (--max-connections) and the "
            "server's own files need %d. Raise the limit (ulimit -n) or lower "
            "--max-connections, or connections beyond about %d will wait unanswered",
            raised,
            limits.max_connections,
            wanted,
            max(raised - RESERVED_DESCRIPTORS, 0),
        )
