"""Write docs/configuration.md from the Settings fields: `make docs`, or
`python -m locallab_gguf.cli.gen_docs [PATH]` from the repository root.

The flags, their environment variables, defaults and descriptions have one source, the
`Settings` class; this page is generated from it so it can never say otherwise.
tests/test_docs.py fails when the committed page differs from what this writes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from locallab_gguf.setting_flags import FlagSpec, flag_groups
from locallab_gguf.settings import env_name

PAGE = Path("docs") / "configuration.md"
COMMAND = "make docs"

_INTRO = f"""\
# Configuration

<!-- Generated from locallab_gguf/settings.py by `{COMMAND}`
     (python -m locallab_gguf.cli.gen_docs); edit the Settings fields, not this page. -->

`locallab-gguf serve` takes every setting below as a flag and as an environment variable
(`--threads 4` or `LOCALLAB_THREADS=4`). A flag beats the environment, which beats the
default. `.venv/bin/locallab-gguf serve --help` prints the same list, grouped the same way.

- A repeatable flag (`--api-key`, `--trusted-proxy`, `--cors-origin`) may be given several
  times; its environment variable holds a comma-separated list, and flags given on the command
  line replace that list rather than add to it.
- A yes/no setting has a `--no-` form (`--no-ui`); its environment variable takes `true` or
  `false` (or `1`, `0`).
- A model's own entry in `models.toml` beats `--ctx` (`context_length`), `--parallel` and
  `--keep-alive`; `--gpu-layers` beats its `n_gpu_layers` (see [models.md](models.md)).
- `locallab-gguf system` takes the same flags and prints what `serve` would do with them
  (threads, GPU layers, memory) without starting a server.
"""


def _flag(spec: FlagSpec) -> str:
    if spec.kind is bool:
        return f"`{spec.flag}`, `--no-{spec.flag[2:]}`"
    if spec.repeated:
        return f"`{spec.flag}` (repeatable)"
    return f"`{spec.flag}`"


def _environment(spec: FlagSpec) -> str:
    name = f"`{env_name(spec.name)}`"
    return name + " (comma-separated)" if spec.repeated else name


# A setting whose default depends on the machine or the registry says so in its description:
# "... (default: physical cores)". The table shows that text as the default.
_DEFAULT_IN_HELP = re.compile(r"\s*\(default: ([^)]*)\)")


def _default(spec: FlagSpec) -> str:
    described = _DEFAULT_IN_HELP.search(spec.help)
    if described is not None:
        return described[1]
    if spec.default is None or spec.default == ():
        return "none"
    if isinstance(spec.default, bool):
        return "on" if spec.default else "off"
    if isinstance(spec.default, float):
        return f"`{spec.default:g}`"
    return f"`{spec.default}`"


def _meaning(spec: FlagSpec) -> str:
    text = _DEFAULT_IN_HELP.sub("", spec.help).replace("|", "\\|")
    if spec.choices:
        text += "; one of " + ", ".join(f"`{choice}`" for choice in spec.choices)
    return text


def render() -> str:
    parts = [_INTRO]
    for group in flag_groups():
        parts.append(f"\n## {group.title}\n\n{group.about[0].upper()}{group.about[1:]}.\n\n")
        parts.append("| flag | environment | default | meaning |\n|---|---|---|---|\n")
        for spec in group.specs:
            row = (_flag(spec), _environment(spec), _default(spec), _meaning(spec))
            parts.append("| " + " | ".join(row) + " |\n")
    return "".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    target = Path(arguments[0]) if arguments else PAGE
    target.write_text(render(), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
