"""Tiny BERT-architecture GGUFs written by the tests: an embedding model and a reranker.

No embedding model ships on PyPI, and the tests reach no hub; llama.cpp loads these as it
loads bge-small or jina-reranker (the same architecture, tensor names and WordPiece
vocabulary, only a few hundred kilobytes of random weights). Their vectors mean nothing; the
tests compare them with what bare llama-cpp-python computes from the same file.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_EMBD = 64
N_FF = 128
N_HEAD = 4
N_LAYER = 2
N_CTX_TRAIN = 128
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = tuple(
    " ".join(
        (
            "the a an is are was of to in on and or for with what which who how why where",
            "when cat cats dog dogs sat mat sun moon sky blue red green fast slow city capital",
            "france paris london river sea fish bird tree leaf rain snow day night hello world",
            "machine learning deep neural network apple fruit sweet grows trees theory",
            "relativity einstein query document relevant answer question search text vector",
            "embedding model local",
        )
    ).split(" ")
)
LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'")


def _vocabulary() -> tuple[list[str], list[int]]:
    # WordPiece as llama.cpp stores it: a word start carries "▁" (U+2581), a continuation
    # piece is bare (convert_hf_to_gguf.py turns "##ing" into "ing" and "cat" into "▁cat").
    pieces = ["\u2581" + word for word in [*WORDS, *LETTERS]] + LETTERS
    tokens = SPECIALS + list(dict.fromkeys(pieces))  # each piece once
    types = [gguf.TokenType.CONTROL] * len(SPECIALS)
    types += [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS))
    return tokens, [int(kind) for kind in types]


VOCABULARY_SIZE = len(_vocabulary()[0])


def write_tiny_bert(path: Path, *, reranker: bool = False, seed: int = 7) -> Path:
    """A 2-layer BERT with mean pooling, or with a classifier head and rank pooling."""
    rng = np.random.default_rng(seed)
    tokens, token_types = _vocabulary()
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name("tiny-bert-reranker" if reranker else "tiny-bert-embedding")
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_feed_forward_length(N_FF)
    writer.add_block_count(N_LAYER)
    writer.add_head_count(N_HEAD)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.RANK if reranker else gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if reranker:
        writer.add_classifier_output_labels(["relevance"])
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_type_count(2)
    writer.add_pad_token_id(0)
    writer.add_unk_token_id(1)
    writer.add_bos_token_id(2)  # [CLS]
    writer.add_sep_token_id(3)
    writer.add_eos_token_id(3)
    writer.add_mask_token_id(4)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)

    def weights(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def tensor(name: str, data: np.ndarray) -> None:
        writer.add_tensor(name, data)

    ones = np.ones(N_EMBD, dtype=np.float32)
    zeros = np.zeros(N_EMBD, dtype=np.float32)
    # numpy shapes are (rows, columns) = llama.cpp's {ne1, ne0} reversed.
    tensor("token_embd.weight", weights(len(tokens), N_EMBD, scale=1.0))
    tensor("token_types.weight", weights(2, N_EMBD))
    tensor("position_embd.weight", weights(N_CTX_TRAIN, N_EMBD))
    tensor("token_embd_norm.weight", ones)
    tensor("token_embd_norm.bias", zeros)
    for layer in range(N_LAYER):
        block = f"blk.{layer}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"{block}.{part}.weight", weights(N_EMBD, N_EMBD))
            tensor(f"{block}.{part}.bias", weights(N_EMBD, scale=0.02))
        tensor(f"{block}.attn_output_norm.weight", ones)
        tensor(f"{block}.attn_output_norm.bias", zeros)
        tensor(f"{block}.ffn_up.weight", weights(N_FF, N_EMBD))
        tensor(f"{block}.ffn_up.bias", weights(N_FF, scale=0.02))
        tensor(f"{block}.ffn_down.weight", weights(N_EMBD, N_FF))
        tensor(f"{block}.ffn_down.bias", weights(N_EMBD, scale=0.02))
        tensor(f"{block}.layer_output_norm.weight", ones)
        tensor(f"{block}.layer_output_norm.bias", zeros)
    if reranker:
        tensor("cls.weight", weights(N_EMBD, N_EMBD))
        tensor("cls.bias", weights(N_EMBD, scale=0.02))
        tensor("cls.output.weight", weights(1, N_EMBD, scale=1.0))
        tensor("cls.output.bias", np.zeros(1, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
