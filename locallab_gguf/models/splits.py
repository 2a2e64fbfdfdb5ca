"""Split GGUF files, as llama.cpp's `gguf-split` names them: `name-00001-of-00003.gguf`.

A model above the hub's 50 GB per file comes in parts; each part is a GGUF file of its own
(the first holds the metadata, every part some of the tensors, and `split.count`, `split.no`,
`split.tensors.count` say how they fit). llama.cpp loads the other parts itself when given
the first, from the same directory, so a split model is named, cached and loaded by its first
part; the other parts follow it everywhere (download, checks, removal).
"""

from __future__ import annotations

import re
from pathlib import Path

_PART = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def split_parts(file: str) -> list[str]:
    """Every part of the model `file` names, first to last: [file] for a file in one piece."""
    match = _PART.match(file)
    if match is None or int(match["count"]) < 2:
        return [file]
    count = int(match["count"])
    return [f"{match['prefix']}-{no:05d}-of-{count:05d}.gguf" for no in range(1, count + 1)]


def is_first_part(file: str) -> bool:
    """Whether `file` stands for its model: a file in one piece, or the first of its parts."""
    match = _PART.match(file)
    return match is None or int(match["no"]) == 1 or int(match["count"]) < 2


def local_parts(path: Path) -> list[Path]:
    """The files of the model whose (first) file is `path`, from the same directory."""
    return [path.with_name(Path(part).name) for part in split_parts(path.name)]
