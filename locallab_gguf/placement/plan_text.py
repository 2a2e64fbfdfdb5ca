"""An offload plan in one line, as the server's log, `pull` and a load's status say it."""

from __future__ import annotations

from locallab_gguf.placement.offload import OffloadPlan
from locallab_gguf.sizes import human_bytes


def plan_summary(plan: OffloadPlan) -> str:
    estimate = plan.estimate
    verdict = "fits" if plan.fits else "does NOT fit"
    on_workers = plan.rpc_layers
    workers = f"{on_workers} on RPC workers, " if on_workers else ""
    return (
        f"{workers}{estimate.gpu_layers - on_workers} of {estimate.total_layers} layers on the "
        f"GPU ({plan.reason}); "
        f"context {estimate.parallel} slots x {estimate.context_per_slot:,} tokens; "
        f"VRAM {human_bytes(estimate.vram_bytes)}, RAM {human_bytes(estimate.ram_bytes)} of "
        f"{human_bytes(plan.ram_available_bytes)} available: {verdict}"
    )
