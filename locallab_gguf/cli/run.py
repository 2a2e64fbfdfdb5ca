"""`locallab-gguf run MODEL [PROMPT]`: one answer streamed to stdout, or a chat.

Against a running server, which loads MODEL on demand as it does for any request. With a
PROMPT (or `-`, or no PROMPT and piped input: the prompt is read from stdin) the answer is
streamed to stdout and the command ends; without one at a terminal it starts the chat of
`locallab-gguf chat` with that model.
"""

from __future__ import annotations

import contextlib
from typing import TextIO

import msgspec

from locallab_gguf.cli.chat import ChatSession, ReadLine
from locallab_gguf.cli.chat_client import ChatClient, Reply
from locallab_gguf.errors import InvalidRequest

STDIN = "-"


class RunOptions(msgspec.Struct, frozen=True, kw_only=True):
    temperature: float | None = None
    max_tokens: int | None = None
    system: str | None = None
    verbose: bool = False  # the speed line on stderr after the answer


def prompt_of(given: str | None, stdin: TextIO) -> str | None:
    """The prompt to answer; None: none given at a terminal, so chat."""
    if given == STDIN or (given is None and not stdin.isatty()):
        text = stdin.read()
        if not text.strip():
            raise InvalidRequest("the prompt read from standard input is empty")
        return text
    return given


def run(
    client: ChatClient,
    model: str,
    prompt: str | None,
    options: RunOptions,
    *,
    read_line: ReadLine,
    out: TextIO,
    err: TextIO,
) -> None:
    if prompt is None:
        session = ChatSession(
            client,
            model,
            out,
            temperature=options.temperature,
            max_tokens=options.max_tokens,
            system=options.system,
        )
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        session.run(read_line)
        return
    answer(client, model, prompt, options, out=out, err=err)


def answer(
    client: ChatClient,
    model: str,
    prompt: str,
    options: RunOptions,
    *,
    out: TextIO,
    err: TextIO,
) -> None:
    system = [{"role": "system", "content": options.system}] if options.system else []
    text_ended_line = True
    for piece in client.stream_chat(
        model,
        [*system, {"role": "user", "content": prompt}],
        temperature=options.temperature,
        max_tokens=options.max_tokens,
    ):
        if isinstance(piece, Reply):
            if not text_ended_line:
                out.write("\n")  # the shell's prompt starts on a line of its own
            out.flush()
            if options.verbose:
                err.write(
                    f"[{piece.prompt_tokens} prompt tokens, {piece.completion_tokens} "
                    f"generated in {piece.seconds:.2f} s, {piece.tokens_per_second:.1f} "
                    f"tokens/s, finish: {piece.finish_reason}]\n"
                )
            continue
        out.write(piece)
        out.flush()
        text_ended_line = piece.endswith("\n")
