"""The GGUF header reader, checked against the `gguf` package's reader on the real model."""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec
import pytest

from locallab_gguf.errors import ModelUnavailable
from locallab_gguf.placement.gguf_file import (
    GgufFormatError,
    read_gguf_header,
    read_gguf_header_from,
)


@pytest.mark.slow
def test_metadata_and_tensors_agree_with_the_gguf_package(model_path: Path) -> None:
    from gguf import GGUFReader

    reference = GGUFReader(model_path)
    header = read_gguf_header(model_path)
    alignment = 32
    expected = {tensor.name: tensor for tensor in reference.tensors}
    assert {tensor.name for tensor in header.tensors} == set(expected)
    for tensor in header.tensors:
        real = expected[tensor.name]
        # Sizes come from offsets, so they include the padding up to the next tensor.
        assert real.n_bytes <= tensor.n_bytes < real.n_bytes + alignment, tensor.name
        assert tensor.shape == tuple(int(n) for n in real.shape), tensor.name
        assert header.data_offset + tensor.offset == real.data_offset, tensor.name
    for key, field in reference.fields.items():
        if key.startswith("GGUF."):
            continue
        if key in header.metadata:
            assert header.metadata[key] == pytest.approx(field.contents()), key
        else:  # a long array: skipped, its length kept
            assert header.array_lengths[key] == len(field.data), key


def test_reading_the_header_skips_the_vocabulary(model_path: Path) -> None:
    # The 49,152 token strings are counted, not read: that is what keeps a header read in
    # milliseconds (the gguf package reads them all, in seconds).
    header = read_gguf_header(model_path)
    assert header.architecture == "llama"
    assert header.metadata["llama.block_count"] == 30
    assert header.metadata["general.languages"] == ["en"]
    assert "tokenizer.ggml.tokens" not in header.metadata
    assert header.array_lengths["tokenizer.ggml.tokens"] == 49152
    assert sum(tensor.n_bytes for tensor in header.tensors) == 96_576_768
    assert header.file_size == 98_362_432


def _file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "cannot mmap an empty file"),
        (b"PK\x03\x04 a zip file, not a model", "it does not start with 'GGUF'"),
        (b"GGUF" + struct.pack("<I", 1) + bytes(16), "GGUF version 1 is not 2 or 3"),
        (b"GGUF" + struct.pack("<IQQ", 3, 5, 2), "the header is cut short"),
    ],
)
def test_a_damaged_file_says_what_is_wrong_and_what_to_do(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    with pytest.raises(GgufFormatError) as refused:
        read_gguf_header(_file(tmp_path, content))
    message = str(refused.value)
    assert problem in message
    assert "remove it and fetch it again" in message


def test_a_truncated_model_is_refused(model_path: Path, tmp_path: Path) -> None:
    header = read_gguf_header(model_path)
    with model_path.open("rb") as source:
        cut = _file(tmp_path, source.read(header.data_offset + 1000))
    with pytest.raises(GgufFormatError, match="lies past the end of the file"):
        read_gguf_header(cut)


def test_a_missing_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="cannot read"):
        read_gguf_header(tmp_path / "nowhere.gguf")


class _CountingSource:
    """A file read piece by piece, as the hub's range requests read it."""

    def __init__(self, path: Path, *, short: bool = False) -> None:
        self.content = path.read_bytes()
        self.name = path.name
        self.size = len(self.content)
        self.short = short  # answers nothing after its first read: a connection cut short
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        if self.short and len(self.reads) > 1:
            return b""
        return self.content[offset : offset + length]


def test_a_header_read_in_pieces_is_the_header_read_whole_and_reads_no_weights(
    model_path: Path,
) -> None:
    source = _CountingSource(model_path)
    header = read_gguf_header_from(source)
    whole = read_gguf_header(model_path)
    assert msgspec.structs.replace(header, path=whole.path) == whole
    read = sum(length for _, length in source.reads)
    # The windows grow as the header proves long: a few reads, ending near the tensor table.
    assert len(source.reads) <= 4
    assert whole.data_offset <= read < whole.data_offset + 1024 * 1024
    assert all(a + n <= b for (a, n), (b, _) in zip(source.reads, source.reads[1:], strict=False))


def test_a_source_that_ends_early_is_a_header_cut_short(model_path: Path) -> None:
    with pytest.raises(GgufFormatError, match="the header is cut short"):
        read_gguf_header_from(_CountingSource(model_path, short=True))
