"""What one more token in a decode costs here, measured once when the engine opens.

Whether a draft pays depends on it (speculation.required_acceptance): on a GPU a decode of a
few more tokens costs almost nothing over one token, on a small CPU it costs about half a
step per token. It depends on the model, the device, the threads and the build, so it is
measured on the engine's own context rather than assumed: a handful of decodes of 1 and of
1 + MEASURED_EXTRA tokens in one sequence, a fraction of a second at load.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import llama_cpp

from locallab_gguf.engine.runtime.llama import LlamaModel, put_token
from locallab_gguf.engine.runtime.speculation import EXTRA_TOKEN_COST, required_acceptance
from locallab_gguf.engine.types import EngineConfig

log = logging.getLogger(__name__)

MEASURED_EXTRA = 8  # the extra tokens of the measured decode: a typical draft
RUNS = 5  # decodes of each size; their medians are compared
# The measurement is clamped to this range: timing noise must neither make drafts look free
# nor rule them out.
LOWEST, HIGHEST = 0.02, 1.0
PROMPT = "A short text for the engine to measure its own decode on. " * 4


def engine_extra_token_cost(
    context: Any, model: LlamaModel, batch: Any, config: EngineConfig, n_ctx: int
) -> float:
    """The figure a new engine drafts by: the one configured (--draft-cost), else measured in
    its first slot's sequence and logged, or the assumed one when it does not speculate."""
    if config.draft_cost is not None:
        return config.draft_cost
    if not config.speculative:
        return EXTRA_TOKEN_COST
    try:
        cost = measure_extra_token_cost(context, model, batch, 0, min(config.n_batch, n_ctx))
    except RuntimeError as exc:  # the engine can still serve; drafts use the assumed figure
        log.warning(
            "could not measure what a drafted token costs (%s); assuming %.2f",
            exc,
            EXTRA_TOKEN_COST,
        )
        return EXTRA_TOKEN_COST
    log.info(
        "speculative decoding: one more token in a decode costs %.2f of a one-token decode "
        "here, so drafts pay above %.0f %% kept with one request generating, %.0f %% with %d",
        cost,
        100 * required_acceptance(1, cost),
        100 * required_acceptance(config.n_parallel, cost),
        config.n_parallel,
    )
    return cost


def measure_extra_token_cost(
    context: Any, model: LlamaModel, batch: Any, seq_id: int, room: int
) -> float:
    """The time one more token adds to a decode, as a share of a one-token decode, measured
    in sequence `seq_id` of `context` (left empty again); `room`: the fewest tokens the batch
    and the sequence's context hold."""
    memory = llama_cpp.llama_get_memory(context)
    prompt = model.tokenize(PROMPT, add_special=True)[: room - 1 - MEASURED_EXTRA]
    size = len(prompt)
    if size <= MEASURED_EXTRA:  # a context too small to measure in: the assumed figure
        return EXTRA_TOKEN_COST

    def decode(tokens: list[int], start: int) -> float:
        for index, token in enumerate(tokens):
            put_token(batch, index, token, start + index, seq_id, True)
        batch.n_tokens = len(tokens)
        started = time.perf_counter()
        status = llama_cpp.llama_decode(context, batch)
        elapsed = time.perf_counter() - started
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        return elapsed

    def timed(count: int) -> float:
        elapsed = decode(prompt[:count], size)
        llama_cpp.llama_memory_seq_rm(memory, seq_id, size, -1)
        return elapsed

    try:
        decode(prompt, 0)
        timed(1)  # a new batch shape allocates its compute graph first
        timed(1 + MEASURED_EXTRA)
        one = statistics.median(timed(1) for _ in range(RUNS))
        more = statistics.median(timed(1 + MEASURED_EXTRA) for _ in range(RUNS))
    finally:
        llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
    cost = (more - one) / MEASURED_EXTRA / one if one > 0 else HIGHEST
    return min(HIGHEST, max(LOWEST, cost))
