"""What a GGUF file says about its model: family, size, quantization, context, template.

Read from the header only (a few milliseconds), and kept per version of the file, so listing
models over and over reads each header once.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import msgspec

from locallab_gguf.models.splits import local_parts
from locallab_gguf.placement.gguf_file import GgufHeader, Value
from locallab_gguf.placement.gguf_parts import read_model_header

# llama.cpp's llama_ftype: the file's dominant quantization (general.file_type).
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
}


class GgufFacts(msgspec.Struct, frozen=True, kw_only=True):
    architecture: str
    name: str
    parameter_count: int
    quantization: str
    context_length: int
    embedding_length: int
    block_count: int
    chat_template: str | None
    file_size: int

    @property
    def parameter_size(self) -> str:
        """As people write it: 135M, 1.5B."""
        count = self.parameter_count
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if count >= scale:
                value = count / scale
                digits = 0 if value >= 100 else 1 if value >= 10 else 2
                text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
                return text + unit
        return str(count)


def gguf_facts(path: Path) -> GgufFacts:
    """Of the model at `path`: every part of a split model counts."""
    stats = [part.stat() for part in local_parts(path)]
    return _facts(path, tuple((stat.st_mtime_ns, stat.st_size) for stat in stats))


@functools.lru_cache(maxsize=32)
def _facts(path: Path, versions: tuple[tuple[int, int], ...]) -> GgufFacts:
    header = read_model_header(path)
    size = header.file_size
    arch = header.architecture
    metadata = header.metadata
    template = metadata.get("tokenizer.chat_template")
    file_type = _int(metadata.get("general.file_type"), -1)
    return GgufFacts(
        architecture=arch,
        name=_str(metadata.get("general.name")),
        parameter_count=_int(metadata.get("general.parameter_count"), 0) or _count(header),
        quantization=_FILE_TYPES.get(file_type, "unknown" if file_type < 0 else str(file_type)),
        context_length=_int(metadata.get(f"{arch}.context_length"), 0),
        embedding_length=_int(metadata.get(f"{arch}.embedding_length"), 0),
        block_count=_int(metadata.get(f"{arch}.block_count"), 0),
        chat_template=template if isinstance(template, str) else None,
        file_size=size,
    )


def _count(header: GgufHeader) -> int:
    return sum(math.prod(tensor.shape) for tensor in header.tensors)


def _int(value: Value | None, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: Value | None) -> str:
    return value if isinstance(value, str) else ""
