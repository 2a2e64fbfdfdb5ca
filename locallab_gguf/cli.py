"""locallab-gguf serve | ...: flags -> Settings -> the work, and nothing else."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from locallab_gguf import __version__
from locallab_gguf.errors import LocalLabError
from locallab_gguf.settings import Settings, env_name, flag_specs, load_settings


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, documented with its environment variable and default."""
    for spec in flag_specs():
        default = "" if spec.default in (None, ()) else f"; default: {spec.default}"
        described = f"{spec.help} [env {env_name(spec.name)}{default}]"
        if spec.kind is bool:
            parser.add_argument(
                spec.flag, dest=spec.name, action=argparse.BooleanOptionalAction, help=described
            )
        else:
            parser.add_argument(
                spec.flag,
                dest=spec.name,
                type=spec.kind,
                choices=spec.choices,
                action="append" if spec.repeated else "store",
                help=described,
                metavar=spec.flag[2:].replace("-", "_").upper() if spec.choices is None else None,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="locallab-gguf", description="Serve GGUF language models over the LocalLab REST API."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(**{spec.name: None for spec in flag_specs()})
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve a model over HTTP")
    _add_settings_flags(serve)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {name: getattr(args, name, None) for name in Settings.__struct_fields__}
    return load_settings(os.environ, flags)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if args.command == "serve":
            from locallab_gguf.server import serve

            serve(settings)
    except LocalLabError as exc:
        print(f"locallab-gguf: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C after a clean shutdown: exit as a shell expects
        return 130
    return 0
