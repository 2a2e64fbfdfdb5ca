"""The model commands: ls (models), show, rm on this machine's files; ps, stop, run against a
running server. Their flags, and the one place that runs them.

They exit 0 when done and 1 when not, with the reason on stderr (2 is argparse's: the
command line itself is wrong).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from locallab_gguf.cli.chat_client import ChatClient
from locallab_gguf.cli.server_client import client_key, server_url
from locallab_gguf.errors import LocalLabError
from locallab_gguf.setting_flags import flag_specs
from locallab_gguf.settings import Settings, env_name

MODEL_COMMANDS = ("ls", "models", "show", "rm", "ps", "stop", "run")

# The commands that read models take only the settings that say where models are, under the
# names users of other model tools know (--token, not --hf-token).
HUB_FLAGS = {
    "models_file": "--models-file",
    "cache_dir": "--cache-dir",
    "hf_token": "--token",
    "offline": "--offline",
}
_WHERE_MODELS_ARE = ["models_file", "cache_dir"]


def add_hub_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    specs = {spec.name: spec for spec in flag_specs()}
    for name in names:
        spec, flag = specs[name], HUB_FLAGS[name]
        described = f"{spec.help} [env {env_name(name)}]"
        if spec.kind is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=described
            )
        else:
            metavar = flag[2:].replace("-", "_").upper()
            parser.add_argument(flag, dest=name, help=described, metavar=metavar)


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="the server (default: LOCALLAB_URL, else the LOCALLAB_HOST and LOCALLAB_PORT that "
        "serve binds, on loopback: http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--api-key",
        dest="client_api_key",
        metavar="KEY",
        help="key for a server that requires one (default: LOCALLAB_API_KEY, else the first "
        "admin key of LOCALLAB_API_KEYS)",
    )


def _add_json_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def add_model_commands(commands: Any) -> None:
    listing = "list the registry's models and the hub files pulled to this machine, with sizes"
    for name, about in (("ls", listing), ("models", "the same as ls")):
        parser = commands.add_parser(name, help=about, description=listing)
        add_hub_flags(parser, _WHERE_MODELS_ARE)
        _add_json_flag(parser, "the list")

    show = commands.add_parser(
        "show",
        help="architecture, parameters, quantization, context, chat template and capabilities "
        "of a model on this machine, from its GGUF header",
    )
    show.add_argument("model", metavar="MODEL", help="a registry id or a hub id")
    add_hub_flags(show, _WHERE_MODELS_ARE)
    _add_json_flag(show, "everything, the whole chat template included,")

    rm = commands.add_parser(
        "rm",
        help="remove a model's downloaded file from the cache",
        description="Refuses a model that ships inside a Python package, and one that the "
        "server at --url holds (unload it there first with `stop`).",
    )
    rm.add_argument("model", metavar="MODEL", help="a registry id or a hub id")
    add_hub_flags(rm, _WHERE_MODELS_ARE)
    _add_server_flags(rm)

    ps = commands.add_parser(
        "ps", help="the models a running server holds: memory, context, until when"
    )
    _add_server_flags(ps)
    _add_json_flag(ps, "the server's /api/ps answer")

    stop = commands.add_parser("stop", help="unload a model on a running server (admin key)")
    stop.add_argument("model", metavar="MODEL", help="the model's id on that server")
    _add_server_flags(stop)

    _add_run_parser(commands)


def _add_run_parser(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="one answer from a model on a running server, or a chat with it",
        description="With PROMPT, streams the answer to stdout and exits. PROMPT '-', or no "
        "PROMPT with input piped in, reads the prompt from stdin. No PROMPT at a terminal "
        "starts a chat (as `chat --url`). The server loads MODEL if it is not loaded yet.",
    )
    run.add_argument("model", metavar="MODEL", help="a registry id or a hub id")
    run.add_argument("prompt", metavar="PROMPT", nargs="?", help="the question ('-': stdin)")
    _add_server_flags(run)
    run.add_argument("--temperature", type=float, help="0 is greedy (default: the server's)")
    run.add_argument("--max-tokens", type=int, help="longest answer in tokens")
    run.add_argument("--system", help="system prompt")
    run.add_argument(
        "--verbose", action="store_true", help="after the answer, its tokens and speed on stderr"
    )


def run_model_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        _dispatch(args, settings)
    except LocalLabError as exc:
        print(f"locallab-gguf {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader left (`run ... | head -1`): no traceback, and nothing more to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _dispatch(args: argparse.Namespace, settings: Settings) -> None:
    # Each command imports only what it uses: listing the cache never loads the web stack.
    env = os.environ
    command = args.command
    if command in ("ls", "models"):
        from locallab_gguf.cli.models import list_models

        list_models(settings, env, sys.stdout, as_json=args.json)
    elif command == "show":
        from locallab_gguf.cli.show import show

        show(settings, env, args.model, sys.stdout, as_json=args.json)
    elif command == "rm":
        from locallab_gguf.cli.remove import SERVER_CHECK_SECONDS, remove

        server = _client(args, settings, timeout=SERVER_CHECK_SECONDS)
        remove(settings, env, args.model, server, sys.stdout, sys.stderr)
    elif command == "ps":
        from locallab_gguf.cli.running import ps

        ps(_client(args, settings), sys.stdout, as_json=args.json)
    elif command == "stop":
        from locallab_gguf.cli.running import stop

        stop(_client(args, settings), args.model, sys.stderr)
    elif command == "run":
        from locallab_gguf.cli.run import RunOptions, prompt_of, run

        options = RunOptions(
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            system=args.system,
            verbose=args.verbose,
        )
        prompt = prompt_of(args.prompt, sys.stdin)
        client = _client(args, settings)
        run(client, args.model, prompt, options, read_line=input, out=sys.stdout, err=sys.stderr)


def _client(args: argparse.Namespace, settings: Settings, timeout: float = 600) -> ChatClient:
    return ChatClient(
        server_url(settings, os.environ, args.url),
        client_key(settings, os.environ, args.client_api_key),
        timeout,
    )
