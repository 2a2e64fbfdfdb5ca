"""The loaded GGUF model: weights, vocabulary and metadata, over llama.cpp's C API.

This is the one place that calls llama.cpp's loading, vocabulary and context-creation
functions; the scheduler owns the context built on top of the model.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path
from typing import Any

import llama_cpp

from locallab_gguf.engine.rpc.native import attach_workers, local_devices
from locallab_gguf.engine.rpc.protocol import parse_endpoint, wait_for
from locallab_gguf.engine.types import EngineConfig, FlashAttention, KvCacheType, RpcLayers
from locallab_gguf.errors import ModelLoadFailed

log = logging.getLogger(__name__)


@functools.cache
def _ensure_backend() -> None:
    """llama.cpp's backend is initialised once per process, before the first model."""
    _install_log_bridge()
    llama_cpp.llama_backend_init()


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_bridge(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # llama.cpp prints hundreds of lines per load: keep them at debug, but let its warnings
    # and errors through (ggml levels: 3 warn, 4 error).
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        log.log(_LOG_LEVELS.get(level, logging.DEBUG), "llama.cpp: %s", message)


_LOG_LEVELS = {3: logging.WARNING, 4: logging.ERROR}


def _install_log_bridge() -> None:
    llama_cpp.llama_log_set(_log_bridge, ctypes.c_void_p())


def supports_gpu_offload() -> bool:
    """Whether this build has a backend for a GPU of this machine (CUDA, Metal...).
    llama.cpp's own llama_supports_gpu_offload() also says yes for the RPC backend, which every
    build here has: that offloads to other machines, not to a GPU here."""
    _ensure_backend()
    return any(
        device.kind in ("GPU", "iGPU") and not device.name.startswith("RPC")
        for device in local_devices()
    )


def llama_cpp_version() -> str:
    return str(getattr(llama_cpp, "__version__", "unknown"))


def _attach_rpc_workers(rpc: RpcLayers) -> ctypes.Array[ctypes.c_float]:
    """Wait for each worker (bounded), attach their devices, and return llama.cpp's split."""
    endpoints = [parse_endpoint(text) for text in rpc.endpoints]
    for endpoint in endpoints:
        wait_for(endpoint, rpc.wait_s)
    attach_workers(endpoints)
    split: ctypes.Array[ctypes.c_float] = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)()
    for index, layers in enumerate(rpc.device_layers[: llama_cpp.LLAMA_MAX_DEVICES]):
        split[index] = float(layers)
    return split


class LlamaModel:
    """Weights and vocabulary; thread-safe for tokenizing while a context decodes."""

    def __init__(
        self,
        path: Path,
        n_gpu_layers: int = 0,
        use_mmap: bool = True,
        rpc: RpcLayers | None = None,
    ) -> None:
        _ensure_backend()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_mmap = use_mmap
        if rpc is not None:
            # Referenced by params until the load returns.
            split = _attach_rpc_workers(rpc)
            params.tensor_split = split
        self.path = path
        self.n_gpu_layers = n_gpu_layers
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ModelLoadFailed(
                f"llama.cpp could not load {path.name}: the file is not a GGUF model this build "
                "supports (see the server log for llama.cpp's reason)"
            )
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self._model))
        self.n_layer = int(llama_cpp.llama_model_n_layer(self._model))
        self.size_bytes = int(llama_cpp.llama_model_size(self._model))
        self.metadata = self._read_metadata()
        self.bos_token = self._special_text(llama_cpp.llama_vocab_bos(self._vocab))
        self.eos_token = self._special_text(llama_cpp.llama_vocab_eos(self._vocab))
        # Filled as tokens are met; at most one entry per token of the vocabulary each.
        self._pieces: dict[int, bytes] = {}
        self._rendered_pieces: dict[int, bytes] = {}

    @property
    def handle(self) -> Any:
        return self._model

    @property
    def vocab(self) -> Any:
        return self._vocab

    def close(self) -> None:
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    def control_texts(self) -> list[str]:
        """The texts of the control tokens (<|im_start|>, <|eot_id|>, [INST]...)."""
        texts = []
        for token in range(self.n_vocab):
            if llama_cpp.llama_vocab_is_control(self._vocab, token):
                text = self._special_text(token)
                if text:
                    texts.append(text)
        return texts

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        """Special-token text such as <|im_start|> becomes its token, as chat templates need,
        unless `parse_special` is False (text a client wrote)."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            tokens = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), tokens, capacity, add_special, parse_special
            )
            if count >= 0:
                return list(tokens[:count])
            capacity = -count

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for; control tokens stand for nothing."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._pieces[token] = self._token_bytes(token, special=False)
        return cached

    def rendered_piece(self, token: int) -> bytes:
        """The bytes a token stands for, a control token as its text (<|im_start|>), as
        llama.cpp's server shows tokens."""
        cached = self._rendered_pieces.get(token)
        if cached is None:
            cached = self._rendered_pieces[token] = self._token_bytes(token, special=True)
        return cached

    def _token_bytes(self, token: int, special: bool) -> bytes:
        # A buffer per call: pieces are asked for from several threads at once (the engine's
        # and those that prepare requests), and llama.cpp writes into it without the GIL.
        buffer = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        if size < 0:  # longer than the buffer: -size is its length
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(
                self._vocab, token, buffer, len(buffer), 0, special
            )
        return buffer.raw[: max(size, 0)]

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        text = llama_cpp.llama_vocab_get_text(self._vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def _read_metadata(self) -> dict[str, str]:
        metadata: dict[str, str] = {}
        buffer = ctypes.create_string_buffer(1 << 16)
        for index in range(llama_cpp.llama_model_meta_count(self._model)):
            size = llama_cpp.llama_model_meta_key_by_index(self._model, index, buffer, len(buffer))
            key = buffer.value.decode("utf-8", errors="replace") if size >= 0 else ""
            size = llama_cpp.llama_model_meta_val_str_by_index(
                self._model, index, buffer, len(buffer)
            )
            if size >= len(buffer):  # long values (chat templates) need a bigger buffer
                big = ctypes.create_string_buffer(size + 1)
                llama_cpp.llama_model_meta_val_str_by_index(self._model, index, big, len(big))
                value = big.value
            else:
                value = buffer.value if size >= 0 else b""
            metadata[key] = value.decode("utf-8", errors="replace")
        return metadata


# llama.cpp's flash_attn_type for each setting; AUTO leaves the choice to llama.cpp (on where
# the backend has the kernel).
FLASH_ATTN_TYPES = {
    FlashAttention.AUTO: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    FlashAttention.ON: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    FlashAttention.OFF: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}

# ggml's element type for each KV cache type.
GGML_KV_TYPES = {
    KvCacheType.F16: llama_cpp.GGML_TYPE_F16,
    KvCacheType.Q8_0: llama_cpp.GGML_TYPE_Q8_0,
    KvCacheType.Q4_0: llama_cpp.GGML_TYPE_Q4_0,
}


def create_context(model: LlamaModel, config: EngineConfig, per_slot: int, unified: bool) -> Any:
    """A context of `per_slot` tokens for each of the config's slots, one KV sequence each."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = per_slot * config.n_parallel
    params.n_batch = config.n_batch
    params.n_ubatch = config.n_batch
    params.n_seq_max = config.n_parallel
    params.kv_unified = unified  # see KvLayout
    params.flash_attn_type = FLASH_ATTN_TYPES[config.effective_flash_attn]
    params.type_k = GGML_KV_TYPES[config.cache_type_k]
    params.type_v = GGML_KV_TYPES[config.cache_type_v]
    params.n_threads = config.n_threads
    params.n_threads_batch = config.n_threads_batch
    params.no_perf = True
    context = llama_cpp.llama_init_from_model(model.handle, params)
    if not context:
        raise ModelLoadFailed(
            f"llama.cpp could not create a context of {per_slot:,} tokens for each of "
            f"{config.n_parallel} slots ({config.cache_type_k.value} K, "
            f"{config.cache_type_v.value} V cache) for {model.path.name}; "
            "start with a smaller --ctx or fewer --parallel slots"
        )
    return context


def put_token(batch: Any, index: int, token: int, position: int, seq_id: int, logits: bool) -> None:
    """Write one token of one sequence at `index` of a llama_batch."""
    batch.token[index] = token
    batch.pos[index] = position
    batch.n_seq_id[index] = 1
    batch.seq_id[index][0] = seq_id
    batch.logits[index] = logits
