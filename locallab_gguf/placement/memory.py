"""How much memory a GGUF model takes in llama.cpp, and where, for a given number of GPU layers.

llama.cpp counts `n_layer + 1` offloadable layers: the repeating blocks, then the output
layer (final norm and vocabulary head), and offloads the last `N = n_gpu_layers` of them: the
output layer from N = 1 on, then the last `N - 1` blocks (llama-model.cpp: a layer goes to a
GPU when its index is at least `n_layer + 1 - N`; its load log says "offloading output layer
to GPU" first). The input embeddings stay in RAM. Each block's KV cache lives where the block
does.

The sizes come from the file's own tensors. The KV cache takes, per token and per block, a
row of K and a row of V of the block's KV heads times their width, in the cache's element
type (f16, or the q8_0 / q4_0 blocks of 32 values), as llama.cpp's "KV buffer size" reports.

The compute-buffer formula was checked against llama.cpp's reports for the default model
(98.25 MiB measured, 103.5 MiB estimated, for any context and slot count: with flash attention
the buffer does not grow with the context).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import msgspec

from locallab_gguf.engine.types import KvCacheType
from locallab_gguf.placement.gguf_file import GgufFormatError, GgufHeader, Value

# The engine decodes batches of this many tokens (EngineConfig.n_batch = n_ubatch).
BATCH_TOKENS = 512
# llama.cpp gives each sequence a multiple of 256 KV cells.
KV_CELL_QUANTUM = 256
# (values per block, bytes per block) of each KV cache type, as ggml stores them.
KV_TYPE_BLOCKS = {
    KvCacheType.F16: (1, 2),
    KvCacheType.Q8_0: (32, 34),  # 32 int8 values and a f16 scale
    KvCacheType.Q4_0: (32, 18),  # 32 4-bit values and a f16 scale
}
ACTIVATION_BYTES = 4  # f32 activations and logits

_BLOCK = re.compile(r"^blk\.(\d+)\.")
_OUTPUT_TENSORS = ("output.weight", "output_norm.weight", "output_norm.bias", "output.bias")


class ModelMemory(msgspec.Struct, frozen=True, kw_only=True):
    """A model's memory facts, read from its GGUF header."""

    architecture: str
    n_layer: int
    n_ctx_train: int
    n_vocab: int
    n_embd: int
    input_bytes: int  # token embeddings and anything outside the blocks: always in RAM
    layer_bytes: list[int]  # weights of each block
    output_bytes: int  # final norm and head
    tied_head_bytes: int  # a head tied to the embeddings: a copy of them once on the GPU
    # Per block: the values of K and of V one token keeps (KV heads x head width); 0 where
    # the block keeps no cache.
    kv_key_values: list[int]
    kv_value_values: list[int]
    activation_bytes: int  # one batch's working tensors, per device that runs layers
    logits_bytes: int  # one batch's logits, on the device of the output layer

    @property
    def offloadable_layers(self) -> int:
        return self.n_layer + 1

    @property
    def weights_bytes(self) -> int:
        return self.input_bytes + sum(self.layer_bytes) + self.output_bytes


class KvCache(msgspec.Struct, frozen=True, kw_only=True):
    """The KV cache a context opens: `parallel` slots of `context_per_slot` tokens each, K and
    V in their element types."""

    context_per_slot: int
    parallel: int
    type_k: KvCacheType = KvCacheType.F16
    type_v: KvCacheType = KvCacheType.F16

    def with_context(self, context_per_slot: int) -> KvCache:
        return msgspec.structs.replace(self, context_per_slot=context_per_slot)


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """Estimated bytes on the GPU(s) and in RAM for one choice of GPU layers."""

    gpu_layers: int
    gpu_weights_bytes: int
    gpu_kv_bytes: int
    gpu_compute_bytes: int  # per GPU that holds layers
    ram_weights_bytes: int
    ram_kv_bytes: int
    ram_compute_bytes: int
    largest_gpu_block_bytes: int  # one block with its KV: the unit a split can overshoot by

    @property
    def gpu_bytes(self) -> int:
        return self.gpu_weights_bytes + self.gpu_kv_bytes + self.gpu_compute_bytes

    @property
    def ram_bytes(self) -> int:
        return self.ram_weights_bytes + self.ram_kv_bytes + self.ram_compute_bytes

    @property
    def kv_bytes(self) -> int:
        return self.gpu_kv_bytes + self.ram_kv_bytes


def kv_cells_per_slot(context_per_slot: int) -> int:
    return -(-context_per_slot // KV_CELL_QUANTUM) * KV_CELL_QUANTUM


def row_bytes(kind: KvCacheType, values: int) -> int:
    """Bytes of a row of `values` values of type `kind` (ggml_row_size)."""
    per_block, block_bytes = KV_TYPE_BLOCKS[kind]
    return -(-values // per_block) * block_bytes


def kv_bytes_per_cell(model: ModelMemory, kv: KvCache) -> list[int]:
    """Per block, the bytes one token's K and V take in the cache `kv`."""
    return [
        row_bytes(kv.type_k, keys) + row_bytes(kv.type_v, values)
        for keys, values in zip(model.kv_key_values, model.kv_value_values, strict=True)
    ]


def model_memory(header: GgufHeader) -> ModelMemory:
    arch = header.architecture
    meta = header.metadata

    def number(key: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, list):  # some models vary it per layer: the largest is safe
            value = max(int(v) for v in value) if value else default
        if not isinstance(value, int | float):
            raise GgufFormatError(Path(header.path), f"it has no {arch}.{key}")
        return int(value)

    n_layer = number("block_count")
    n_embd = number("embedding_length")
    layer_bytes = [0] * n_layer
    input_bytes = output_bytes = 0
    tied_head = True
    embeddings_bytes = 0
    n_vocab = 0
    for tensor in header.tensors:
        block = _BLOCK.match(tensor.name)
        if block and int(block.group(1)) < n_layer:
            layer_bytes[int(block.group(1))] += tensor.n_bytes
        elif tensor.name in _OUTPUT_TENSORS:
            output_bytes += tensor.n_bytes
            tied_head = tied_head and tensor.name != "output.weight"
        else:
            input_bytes += tensor.n_bytes
            if tensor.name == "token_embd.weight":
                embeddings_bytes = tensor.n_bytes
                n_vocab = tensor.shape[-1] if tensor.shape else 0
    n_vocab = number("vocab_size", n_vocab or header.array_lengths.get("tokenizer.ggml.tokens"))
    n_ff = number("feed_forward_length", 4 * n_embd)
    # A model without causal attention (BERT and other encoders) sees each input whole in one
    # pass: llama.cpp keeps no KV cache for it.
    keys, values = (
        _kv_values_per_cell(arch, meta, n_layer, n_embd)
        if meta.get(f"{arch}.attention.causal", True)
        else ([0] * n_layer, [0] * n_layer)
    )
    return ModelMemory(
        architecture=arch,
        n_layer=n_layer,
        n_ctx_train=number("context_length", 0),
        n_vocab=n_vocab,
        n_embd=n_embd,
        input_bytes=input_bytes,
        layer_bytes=layer_bytes,
        output_bytes=output_bytes,
        tied_head_bytes=embeddings_bytes if tied_head else 0,
        kv_key_values=keys,
        kv_value_values=values,
        activation_bytes=ACTIVATION_BYTES * BATCH_TOKENS * (4 * n_embd + n_ff),
        logits_bytes=ACTIVATION_BYTES * BATCH_TOKENS * n_vocab,
    )


def place(model: ModelMemory, gpu_layers: int, kv: KvCache) -> Placement:
    """Where everything goes with `gpu_layers` offloaded (0 to n_layer + 1)."""
    gpu_layers = max(0, min(gpu_layers, model.offloadable_layers))
    cells = kv_cells_per_slot(kv.context_per_slot) * kv.parallel
    parallel = kv.parallel
    output_on_gpu = gpu_layers > 0
    first_gpu_block = model.n_layer - max(0, min(gpu_layers - 1, model.n_layer))
    gpu_blocks = range(first_gpu_block, model.n_layer)
    ram_blocks = range(first_gpu_block)
    kv_bytes = [per_cell * cells for per_cell in kv_bytes_per_cell(model, kv)]
    cpu_blocks_bytes = [model.layer_bytes[i] for i in ram_blocks]
    if not output_on_gpu:
        # In RAM a tied head reads the embeddings in place; it is copied only to a GPU.
        cpu_blocks_bytes.append(model.output_bytes + model.tied_head_bytes)

    gpu_compute = 0
    if gpu_layers:
        gpu_compute = model.activation_bytes + (model.logits_bytes if output_on_gpu else 0)
        # For prompt batches llama.cpp computes the matrix products of CPU-resident layers
        # on the GPU too, copying their weights over one layer at a time.
        gpu_compute += max(cpu_blocks_bytes, default=0)
    ram_compute = (
        # Once everything is offloaded, only the input embeddings are computed on the CPU.
        ACTIVATION_BYTES * BATCH_TOKENS * model.n_embd
        if output_on_gpu
        else model.activation_bytes + model.logits_bytes
    )
    # The logits handed back to the sampler: one row per slot, always in RAM.
    ram_compute += model.logits_bytes // BATCH_TOKENS * parallel
    return Placement(
        gpu_layers=gpu_layers,
        gpu_weights_bytes=sum(model.layer_bytes[i] for i in gpu_blocks)
        + (model.output_bytes + model.tied_head_bytes if output_on_gpu else 0),
        gpu_kv_bytes=sum(kv_bytes[i] for i in gpu_blocks),
        gpu_compute_bytes=gpu_compute,
        ram_weights_bytes=model.input_bytes
        + sum(model.layer_bytes[i] for i in ram_blocks)
        + (0 if output_on_gpu else model.output_bytes),
        ram_kv_bytes=sum(kv_bytes[i] for i in ram_blocks),
        ram_compute_bytes=ram_compute,
        largest_gpu_block_bytes=max(
            (model.layer_bytes[i] + kv_bytes[i] for i in gpu_blocks), default=0
        ),
    )


def _kv_values_per_cell(
    arch: str, meta: dict[str, Value], n_layer: int, n_embd: int
) -> tuple[list[int], list[int]]:
    heads = _per_layer(meta.get(f"{arch}.attention.head_count"), n_layer)
    kv_heads = _per_layer(meta.get(f"{arch}.attention.head_count_kv"), n_layer)
    key_width = meta.get(f"{arch}.attention.key_length")
    value_width = meta.get(f"{arch}.attention.value_length")
    keys, values = [], []
    for layer in range(n_layer):
        n_head = heads[layer] or 1
        listed_kv = kv_heads[layer]
        # A layer without attention lists 0 KV heads and holds no cache.
        n_head_kv = n_head if listed_kv is None else listed_kv
        head_k = key_width if isinstance(key_width, int) else n_embd // n_head
        head_v = value_width if isinstance(value_width, int) else n_embd // n_head
        keys.append(n_head_kv * head_k)
        values.append(n_head_kv * head_v)
    return keys, values


def _per_layer(value: Value | None, n_layer: int) -> Sequence[int | None]:
    if isinstance(value, list):
        return [int(v) for v in value] + [None] * (n_layer - len(value))
    if isinstance(value, int | float):
        return [int(value)] * n_layer
    return [None] * n_layer
