"""The speculative-sampling rule: which drafted token a sampled request keeps.

A draft proposes token t from its own distribution q; the target's distribution at that
position is p. Keeping t with probability min(1, p(t) / q(t)), and otherwise sampling from
the normalised max(0, p - q), gives tokens distributed exactly as p (Leviathan et al., Chen
et al., 2023): speculation changes the speed, never the output's distribution.

Every draft this engine makes is a deterministic proposal (prompt lookup, the grammar, a
draft model's greedy choice), so q is one-hot at t: the rule keeps t with probability p(t) and
otherwise samples from p without t. Sampling x from p and keeping t exactly when x == t is the
same distribution, and the engine does that: the request's own sampler (temperature, top-p,
penalties, grammar, seed) picks each token, so a seeded request draws the same numbers, in the
same order, as it would without speculation, and gives the same text.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Probabilities = npt.NDArray[np.float64]


def speculative_choice(
    p: Probabilities, q: Probabilities, drafted: int, uniform: Callable[[], float]
) -> tuple[int, bool]:
    """(the token taken at this position, whether it is the drafted one).

    `p` is the target's distribution, `q` the draft's, `drafted` the token drawn from `q`;
    `uniform()` returns a number in [0, 1) (the request's random source)."""
    q_drafted = float(q[drafted])
    if q_drafted > 0.0 and uniform() * q_drafted < float(p[drafted]):
        return drafted, True
    residual = np.maximum(p - q, 0.0)
    total = float(residual.sum())
    if total <= 0.0:  # p == q: the draft is never refused; kept for numerical safety
        residual, total = p, float(p.sum())
    return _draw(residual / total, uniform()), False


def one_hot(size: int, token: int) -> Probabilities:
    """q of a deterministic proposal."""
    q = np.zeros(size, dtype=np.float64)
    q[token] = 1.0
    return q


def _draw(distribution: Probabilities, u: float) -> int:
    cumulative = np.cumsum(distribution)
    index = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
    return min(index, len(distribution) - 1)
