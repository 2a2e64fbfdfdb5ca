"""Which file `owner/repo:QUANT` and `owner/repo` mean, and how split files are named."""

from __future__ import annotations

import pytest

from locallab_gguf.errors import HubFileNotFound, InvalidModelId
from locallab_gguf.models.hub_names import RepoFile, carries_quant, pick_file
from locallab_gguf.models.ids import HubRef
from locallab_gguf.models.splits import is_first_part, split_parts

GB = 10**9
REPO = [
    RepoFile("README.md", 5_000),
    RepoFile("model-Q4_K_M.gguf", 5 * GB),
    RepoFile("model-Q4_K_S.gguf", 4 * GB),
    RepoFile("model-IQ4_XS.gguf", 4 * GB),
    RepoFile("Q8_0/model-Q8_0-00001-of-00002.gguf", 5 * GB),
    RepoFile("Q8_0/model-Q8_0-00002-of-00002.gguf", 4 * GB),
    RepoFile("mmproj-model-f16.gguf", 1 * GB),
]


@pytest.mark.parametrize(
    ("quant", "file"),
    [
        ("q4_k_m", "model-Q4_K_M.gguf"),
        ("Q4_K_S", "model-Q4_K_S.gguf"),
        ("IQ4_XS", "model-IQ4_XS.gguf"),
        ("Q8_0", "Q8_0/model-Q8_0-00001-of-00002.gguf"),  # a split model, by its first part
    ],
)
def test_a_quantization_picks_its_file_whatever_the_case(quant: str, file: str) -> None:
    assert pick_file(HubRef("o/r", quant), REPO)[0].file == file


def test_a_quantization_is_a_whole_word_of_the_name() -> None:
    assert not carries_quant("model-Q4_K_M.gguf", "Q4_K")
    assert not carries_quant("model-IQ4_XS.gguf", "Q4_XS")
    assert carries_quant("model.UD-Q4_K_XL.gguf", "q4_k_xl")


def test_several_matches_are_a_bad_request_listing_them() -> None:
    both = [*REPO, RepoFile("model-instruct-Q4_K_S.gguf", 4 * GB)]
    with pytest.raises(InvalidModelId) as caught:
        pick_file(HubRef("o/r", "Q4_K_S"), both)
    assert "model-Q4_K_S.gguf" in str(caught.value)
    assert "model-instruct-Q4_K_S.gguf" in str(caught.value)


def test_no_match_is_not_found_listing_the_models_of_the_repository() -> None:
    with pytest.raises(HubFileNotFound) as caught:
        pick_file(HubRef("o/r", "Q2_K"), REPO)
    message = str(caught.value)
    assert "model-Q4_K_M.gguf" in message and "Q8_0/model-Q8_0-00001-of-00002.gguf" in message
    assert "00002-of-00002" not in message and "mmproj" not in message


def test_a_repository_alone_means_its_q4_k_m_else_its_smallest_model() -> None:
    chosen, why = pick_file(HubRef("o/r"), REPO)
    assert chosen.file == "model-Q4_K_M.gguf" and "Q4_K_M" in why
    without = [file for file in REPO if "Q4_K_M" not in file.path]
    chosen, why = pick_file(HubRef("o/r"), without)
    assert chosen.file == "model-IQ4_XS.gguf" and "smallest" in why  # 4 GB, before Q4_K_S
    with pytest.raises(HubFileNotFound, match="no GGUF model"):
        pick_file(HubRef("o/r"), [RepoFile("README.md", 5)])


def test_split_files_are_named_as_llama_cpp_writes_them() -> None:
    assert split_parts("d/m-00001-of-00003.gguf") == [
        "d/m-00001-of-00003.gguf",
        "d/m-00002-of-00003.gguf",
        "d/m-00003-of-00003.gguf",
    ]
    assert split_parts("m.gguf") == ["m.gguf"]
    assert is_first_part("m-00001-of-00002.gguf") and not is_first_part("m-00002-of-00002.gguf")
