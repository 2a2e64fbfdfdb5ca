"""Model aliases: names a client insists on (`claude-sonnet-4-5`, `gpt-4o`) that mean a model
of this server. From the `[aliases]` table of models.toml and `--alias NAME=MODEL` flags.

    [aliases]
    "gpt-4o" = "smollm2-135m-instruct"     an exact name
    "claude-*" = "smollm2-135m-instruct"   a glob pattern (*, ?, [abc]), tried in order

An exact name beats a pattern; a registry id beats both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

import msgspec

from locallab_gguf.errors import ConfigError

_GLOB_CHARACTERS = frozenset("*?[")


class Aliases(msgspec.Struct, frozen=True):
    """`exact` names and `patterns` (in order), each with the model id it means."""

    exact: dict[str, str] = msgspec.field(default_factory=dict)
    patterns: tuple[tuple[str, str], ...] = ()

    def target(self, name: str) -> str | None:
        """The model id `name` means, if it is an alias."""
        found = self.exact.get(name)
        if found is not None:
            return found
        for pattern, target in self.patterns:
            if fnmatchcase(name, pattern):
                return target
        return None

    def merged(self, later: Aliases) -> Aliases:
        """These aliases, with `later`'s (the flags') beating them on the same name."""
        patterns = dict(self.patterns) | dict(later.patterns)
        return Aliases(exact=self.exact | later.exact, patterns=tuple(patterns.items()))


def is_pattern(name: str) -> bool:
    return bool(_GLOB_CHARACTERS & set(name))


def aliases_of(table: Mapping[str, str]) -> Aliases:
    exact = {name: target for name, target in table.items() if not is_pattern(name)}
    patterns = tuple((name, target) for name, target in table.items() if is_pattern(name))
    return Aliases(exact=exact, patterns=patterns)


def parse_alias_flags(values: Iterable[str]) -> Aliases:
    """`--alias NAME=MODEL` values (the environment's comma-separated list) as Aliases."""
    table: dict[str, str] = {}
    for value in values:
        name, equals, target = value.partition("=")
        name, target = name.strip(), target.strip()
        if not equals or not name or not target:
            raise ConfigError(
                f"--alias {value!r} is not NAME=MODEL; write for example "
                "--alias 'claude-*=smollm2-135m-instruct'"
            )
        table[name] = target
    return aliases_of(table)
