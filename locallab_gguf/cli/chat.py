"""`locallab-gguf chat`: a conversation with a model in the terminal.

It talks to a server's /v1/chat/completions, streaming each reply as it is generated and
sending the whole conversation every turn (the server's slots keep the shared prefix cached,
so only the new turn is evaluated). Without --url it starts a server for the model on a free
loopback port of this process and talks to that.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from locallab_gguf.cli.chat_client import ChatClient, Reply
from locallab_gguf.cli.server_client import client_key
from locallab_gguf.errors import ModelLoadFailed, ServerRefused
from locallab_gguf.settings import Settings

HELP = (
    "Commands: /system TEXT sets the system prompt (/system alone removes it), "
    "/reset starts the conversation over, /exit quits (so does Ctrl-D)."
)

ReadLine = Callable[[str], str]

UNREACHABLE_HINT = (
    "start a server with `locallab-gguf serve`, or leave out --url to chat with a model "
    "started here"
)


class ChatSession:
    """One conversation: its system prompt and its turns so far."""

    def __init__(
        self,
        client: ChatClient,
        model: str,
        out: TextIO,
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        system: str | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.out = out
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.system = system
        self.turns: list[dict[str, str]] = []

    def run(self, read_line: ReadLine) -> None:
        """Until /exit or end of input; Ctrl-C stops a reply, or quits at the prompt."""
        self._say(f"Chatting with {self.model} at {self.client.base_url}. {HELP}")
        while True:
            try:
                line = read_line("you> ")
            except (EOFError, KeyboardInterrupt):
                self._say("")
                return
            if not self.handle(line.strip()):
                return

    def handle(self, line: str) -> bool:
        """Act on one line of input; False when the session should end."""
        if not line:
            return True
        if line.startswith("/"):
            return self._command(line)
        self.turns.append({"role": "user", "content": line})
        reply = self._stream_reply()
        if reply is None:
            self.turns.pop()  # no answer: the question is not part of the conversation
        return True

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns

    def _command(self, line: str) -> bool:
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if name in ("/exit", "/quit", "/bye"):
            return False
        if name == "/reset":
            self.turns.clear()
            self._say("(conversation cleared)")
        elif name == "/system":
            self.system = argument or None
            self._say("(system prompt set)" if argument else "(system prompt removed)")
        elif name == "/help":
            self._say(HELP)
        else:
            self._say(f"unknown command {name}. {HELP}")
        return True

    def _stream_reply(self) -> Reply | None:
        parts: list[str] = []
        try:
            for piece in self.client.stream_chat(
                self.model,
                self.messages(),
                temperature=self.temperature,
                max_tokens=self.max_tokens,
            ):
                if isinstance(piece, Reply):
                    self.turns.append({"role": "assistant", "content": "".join(parts)})
                    self._say(
                        f"\n[{piece.completion_tokens} tokens in {piece.seconds:.2f} s, "
                        f"{piece.tokens_per_second:.1f} tokens/s]"
                    )
                    return piece
                parts.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            # Closing the connection makes the server stop generating.
            self._say("\n(stopped; the reply is not kept)")
        except ServerRefused as exc:
            self._say(f"\nerror: {exc}")
        return None

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def choose_model(client: ChatClient, requested: str | None) -> str:
    served = client.model_ids()
    if requested is not None:
        return requested  # a wrong id gets the server's own 404 message on the first turn
    if not served:
        raise ServerRefused(
            f"the server at {client.base_url} has no model loaded; load one with "
            "POST /models/load, or pass --model"
        )
    return served[0]


def wait_until_loaded(client: ChatClient, out: TextIO, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        health = client.health()
        status = health.get("model_status")
        if status == "loaded":
            return
        if status in ("failed", "unloaded"):
            raise ModelLoadFailed(
                "the model did not load; run `locallab-gguf serve` to see why in its log"
            )
        if time.monotonic() > deadline:
            raise ModelLoadFailed(f"the model did not load within {timeout:.0f} s")
        if not announced:
            out.write("loading the model...\n")
            out.flush()
            announced = True
        time.sleep(0.1)


@contextlib.contextmanager
def local_server(settings: Settings) -> Iterator[str]:
    """Serve `settings.model` on a free loopback port in a thread; yields its URL."""
    # The engine and the web stack: imported only when used.
    from locallab_gguf.cli.serve import build_app, serve_in_thread

    with serve_in_thread(build_app(settings)) as running:
        yield running.url


def chat(
    settings: Settings,
    *,
    url: str | None,
    model: str | None,
    api_key: str | None,
    temperature: float | None,
    max_tokens: int | None,
    system: str | None,
    read_line: ReadLine,
    out: TextIO,
) -> None:
    """Chat with the server at `url`, or with `model` (default: the registry's) started here."""
    with contextlib.ExitStack() as stack:
        if url is None:
            url = stack.enter_context(local_server(settings))
            # The in-process server takes the key check from the same settings; a key
            # written 'admin:KEY' there is sent as KEY.
            api_key = api_key or client_key(settings, {}, None)
            client = ChatClient(url, api_key)
            wait_until_loaded(client, out)
            model = None  # whatever it loaded is what it serves
        else:
            client = ChatClient(url, api_key, unreachable_hint=UNREACHABLE_HINT)
        session = ChatSession(
            client,
            choose_model(client, model),
            out,
            temperature=temperature,
            max_tokens=max_tokens,
            system=system,
        )
        session.run(read_line)
