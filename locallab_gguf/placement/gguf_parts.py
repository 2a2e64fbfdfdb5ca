"""A model's whole header when its file comes in parts (models/splits.py): the first part's
metadata, every part's tensors.

Each part is a GGUF file of its own, with `split.no`, `split.count` and `split.tensors.count`;
the parts are checked against those keys, so a part from another model or a missing one is
named rather than planned as a smaller model.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from locallab_gguf.errors import ModelUnavailable
from locallab_gguf.models.splits import local_parts
from locallab_gguf.placement.gguf_file import GgufFormatError, GgufHeader, read_gguf_header


def read_model_header(path: Path) -> GgufHeader:
    """The header of the model at `path`, every part of a split model included."""
    parts = local_parts(path)
    missing = [part.name for part in parts if not part.exists()]
    if missing:
        raise ModelUnavailable(
            f"{path.name} is the first of {len(parts)} parts, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not beside it in {path.parent}; pull "
            "the model again to fetch the missing parts"
        )
    return merge_parts([read_gguf_header(part) for part in parts])


def merge_parts(headers: list[GgufHeader]) -> GgufHeader:
    """One header for a model in parts: the first part's metadata, the tensors of all; sizes
    added up. A model in one piece is returned as it is."""
    first = headers[0]
    count = first.metadata.get("split.count", 1)
    if len(headers) == 1 and count in (0, 1):
        return first
    if count != len(headers):
        raise GgufFormatError(
            first.path, f"split.count says {count} parts, but its name says {len(headers)}"
        )
    for number, header in enumerate(headers):
        if header.metadata.get("split.no") != number:
            raise GgufFormatError(
                header.path, f"it should be part {number + 1} of {len(headers)} of {first.path}"
            )
    tensors = [tensor for header in headers for tensor in header.tensors]
    expected = first.metadata.get("split.tensors.count", len(tensors))
    if expected != len(tensors):
        raise GgufFormatError(
            first.path,
            f"its parts hold {len(tensors)} tensors; split.tensors.count says {expected}",
        )
    return msgspec.structs.replace(
        first, tensors=tensors, file_size=sum(header.file_size for header in headers)
    )
