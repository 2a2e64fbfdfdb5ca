"""The hub's rules for repository names (huggingface_hub's validate_repo_id), checked before
huggingface_hub sees a name: so that a bad one is refused naming the rule it breaks, rather
than failing inside huggingface_hub.

An owner and a repository name each hold ASCII letters, digits, '-', '_' and '.'; neither
starts or ends with '-' or '.', nor holds '--' or '..', nor is longer than 96 characters, nor
ends in '.git'.
"""

from __future__ import annotations

import re

NAME_MAX = 96
_NAME_CHAR = "[A-Za-z0-9_.-]"
# One owner or repository name, as a regular expression that ECMA (JSON Schema) and Python
# read alike.
NAME = (
    rf"(?!{_NAME_CHAR}*(?:--|\.\.))(?!{_NAME_CHAR}*\.git(?!{_NAME_CHAR}))"
    rf"[A-Za-z0-9_](?:{_NAME_CHAR}{{0,{NAME_MAX - 2}}}[A-Za-z0-9_])?"
)
_REPO = re.compile(rf"{NAME}/{NAME}")


def repo_problem(repo: str) -> str | None:
    """Which of the hub's rules `repo` (owner/name) breaks, in words; None when it keeps them."""
    if _REPO.fullmatch(repo):
        return None
    owner, slash, name = repo.partition("/")
    if not slash or "/" in name or not owner or not name:
        return f"{repo!r} is not a repository name (owner/name)"
    for part, what in ((owner, "the owner"), (name, "the repository name")):
        if not re.fullmatch(f"{_NAME_CHAR}+", part):
            rule = "may hold only ASCII letters, digits, '-', '_' and '.'"
        elif part[0] in "-." or part[-1] in "-.":
            rule = "may not start or end with '-' or '.'"
        elif "--" in part or ".." in part:
            rule = "may not contain '--' or '..'"
        elif len(part) > NAME_MAX:
            rule = f"is {len(part)} characters long; the hub allows at most {NAME_MAX}"
        elif part.endswith(".git"):
            rule = "may not end with '.git'"
        else:
            continue
        return f"{what} {part!r} {rule}, as the Hugging Face hub requires"
    return f"{repo!r} is not a repository name (owner/name)"
