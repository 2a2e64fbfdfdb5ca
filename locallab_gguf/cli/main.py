"""locallab-gguf serve | ...: flags -> Settings -> the work, and nothing else."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from locallab_gguf import __version__
from locallab_gguf.cli.model_commands import (
    HUB_FLAGS,
    MODEL_COMMANDS,
    add_hub_flags,
    add_model_commands,
    run_model_command,
)
from locallab_gguf.cli.rpc_worker import add_rpc_worker_parser, run_rpc_worker
from locallab_gguf.errors import LocalLabError
from locallab_gguf.log_format import configure_logging
from locallab_gguf.openmp import tune_for_serving
from locallab_gguf.setting_flags import flag_groups, flag_specs, load_settings
from locallab_gguf.settings import Settings, env_name


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, documented with its environment variable and default,
    grouped as docs/configuration.md groups them."""
    for group in flag_groups():
        flags = parser.add_argument_group(group.title.lower(), group.about)
        for spec in group.specs:
            default = "" if spec.default in (None, ()) else f"; default: {spec.default}"
            described = f"{spec.help} [env {env_name(spec.name)}{default}]"
            if spec.kind is bool:
                flags.add_argument(
                    spec.flag, dest=spec.name, action=argparse.BooleanOptionalAction, help=described
                )
            else:
                flags.add_argument(
                    spec.flag,
                    dest=spec.name,
                    type=spec.kind,
                    choices=spec.choices,
                    action="append" if spec.repeated else "store",
                    help=described,
                    metavar=(
                        spec.flag[2:].replace("-", "_").upper() if spec.choices is None else None
                    ),
                )


DESCRIPTION = (
    "Serve GGUF language models on this machine, several at once, over LocalLab's REST API "
    "(/generate, /chat, /models/...) and APIs compatible with OpenAI's (/v1/...), Ollama's "
    "(/api/...) and Anthropic's (/v1/messages)."
)
SERVE_DETAILS = (
    " Every flag also reads the environment variable named beside it; a flag beats the "
    "environment, which beats the default. docs/configuration.md lists the same settings."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="locallab-gguf", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(**{spec.name: None for spec in flag_specs()})
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve models over HTTP", description=DESCRIPTION + SERVE_DETAILS
    )
    _add_settings_flags(serve)
    pull = commands.add_parser(
        "pull", help="download a model into the Hugging Face cache, verify it, print its path"
    )
    pull.add_argument(
        "model_id",
        nargs="?",
        metavar="ID",
        help="a registry id, owner/repo:file.gguf, owner/repo:QUANT, owner/repo or "
        "hf://owner/repo/file.gguf (default: the registry's default model)",
    )
    pull.add_argument("--revision", help="branch, tag or commit (default: the registry's, or main)")
    pull.add_argument(
        "--force",
        action="store_true",
        help="download even a model that the plan says cannot load on this machine",
    )
    add_hub_flags(pull, list(HUB_FLAGS))
    system = commands.add_parser(
        "system",
        help="show CPU, memory, GPUs, threads, and the GPU offload serve would choose",
        description="Takes serve's flags: it shows what serve would do with them.",
    )
    _add_settings_flags(system)
    system.add_argument("--json", action="store_true", help="print the report as JSON")
    system.add_argument(
        "--plan",
        metavar="ID",
        help="the model to plan (as --model), read from the hub when it is not here: only its "
        "header, never its weights",
    )
    _add_chat_parser(commands)
    add_model_commands(commands)
    add_rpc_worker_parser(commands)
    return parser


def _add_chat_parser(commands: Any) -> None:
    chat = commands.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="Streams each reply and keeps the conversation. In the chat: /system TEXT, "
        "/reset, /exit. Without --url, the model is started in this process.",
    )
    chat.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    chat.add_argument(
        "--model",
        metavar="ID",
        help="with --url: the served model's id (default: the one it serves); without: the "
        "model to start (default: the registry's)",
    )
    chat.add_argument(
        "--api-key",
        dest="chat_api_key",
        metavar="KEY",
        help="key for a server that requires one (default: LOCALLAB_API_KEY)",
    )
    chat.add_argument("--temperature", type=float, help="0 is greedy (default: the server's)")
    chat.add_argument("--max-tokens", type=int, help="longest reply in tokens")
    chat.add_argument("--system", help="system prompt to start with")


def _settings(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {name: getattr(args, name, None) for name in Settings.__struct_fields__}
    return load_settings(os.environ, flags)


def _chat(args: argparse.Namespace, settings: Settings) -> None:
    from locallab_gguf.cli.chat import chat

    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    if args.url is None:
        # A server for one person at the terminal: one slot, nobody to rate-limit, and no
        # log lines between the replies.
        settings = msgspec.structs.replace(
            settings, parallel=1, rate_limit=False, log_level="warning"
        )
    chat(
        settings,
        url=args.url,
        model=args.model,
        api_key=args.chat_api_key or os.environ.get("LOCALLAB_API_KEY"),
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        system=args.system,
        read_line=input,
        out=sys.stdout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        configure_logging(
            # Only serve logs each request; the other commands speak for themselves.
            settings.log_level if args.command == "serve" else "warning",
            settings.log_format,
            settings.log_repeat_interval,
        )
        if args.command == "serve":
            tune_for_serving(os.environ)  # before the server imports llama.cpp
            from locallab_gguf.cli.serve import serve

            serve(settings)
        elif args.command == "pull":
            from locallab_gguf.cli.pull import pull

            pull(
                settings,
                args.model_id,
                revision=args.revision,
                force=args.force,
                env=os.environ,
                out=sys.stdout,
                err=sys.stderr,
            )
        elif args.command in MODEL_COMMANDS:
            return run_model_command(args, settings)
        elif args.command == "system":
            from locallab_gguf.cli.system import print_system_report

            if args.plan:
                settings = msgspec.structs.replace(settings, model=args.plan)
            print_system_report(settings, sys.stdout, as_json=args.json)
        elif args.command == "chat":
            _chat(args, settings)
        elif args.command == "rpc-worker":
            tune_for_serving(os.environ)  # before llama.cpp is loaded, as for serve
            return run_rpc_worker(args)
    except LocalLabError as exc:
        print(f"locallab-gguf: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C after a clean shutdown: exit as a shell expects
        return 130
    return 0
