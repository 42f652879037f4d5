"""The Tsallis q-logarithm and the per-example J_Q loss (METHOD.md section 2).

log_q(u) = (u**(1-q) - 1) / (1 - q), log_1(u) = log(u). Computed as expm1((1-q) log u) / (1-q), so it
is exact at q == 1 and continuous as q -> 1 (no 0/0 at q = 1 - 1e-12).
Every function accepts a Python float or a torch tensor and returns the same kind.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch

Num = TypeVar("Num", float, torch.Tensor)


def _check_q(q: float, *, low_open: bool = False) -> float:
    q = float(q)
    if not (0.0 <= q <= 1.0) or (low_open and q == 0.0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"q must lie in {interval}, got {q}")
    return q


def log_q(u: Num, q: float) -> Num:
    """Tsallis q-log of u in [0, 1]; log_q(0) = -1/(1-q) for q < 1 and -inf at q = 1."""
    q = _check_q(q)
    a = 1.0 - q
    if isinstance(u, torch.Tensor):
        if q == 0.0:
            return u - 1.0  # exact at the RL pole
        lu = torch.log(u)
        return lu if a == 0.0 else torch.expm1(a * lu) / a
    if u < 0:
        raise ValueError(f"log_q needs u >= 0, got {u}")
    if q == 0.0:
        return float(u) - 1.0
    lu = math.log(u) if u > 0 else -math.inf
    if a == 0.0:
        return lu
    return (math.expm1(a * lu) if lu != -math.inf else -1.0) / a


def q_loss(p: Num, q: float) -> Num:
    """Per-example loss l_q(P) = -log_q(P): 1 - P at q = 0 (RLVR), -log P at q = 1 (marginal likelihood)."""
    return -log_q(p, q)


def log_q_from_log(log_u: Num, q: float) -> Num:
    """log_q(exp(log_u)) without leaving log space: accurate for log_u of -1000 and below."""
    q = _check_q(q)
    a = 1.0 - q
    if isinstance(log_u, torch.Tensor):
        return log_u if a == 0.0 else torch.expm1(a * log_u) / a
    if a == 0.0:
        return log_u
    return (math.expm1(a * log_u) if log_u != -math.inf else -1.0) / a


def amplification(p: Num, q: float) -> Num:
    """p**-q: the per-example factor that turns the RL gradient (q=0) into the J_Q gradient."""
    q = _check_q(q)
    if not isinstance(p, torch.Tensor):
        if p < 0:
            raise ValueError(f"amplification needs p >= 0, got {p}")
        if p == 0:
            return 1.0 if q == 0.0 else math.inf  # Python's 0.0 ** -q raises ZeroDivisionError
    return p ** (-q)


def attenuation(p: Num, q: float) -> Num:
    """p**(1-q): the per-example factor that turns the MLE gradient (q=1) into the J_Q gradient."""
    q = _check_q(q)
    return p ** (1.0 - q)


def escort(alpha: torch.Tensor, q: float) -> torch.Tensor:
    """Escort minimiser alpha**(1/q) / sum (Thm 3.1), over the last dim; q = 0 gives the mode.

    alpha: [..., J] positive frequencies. At q = 0 the mass is split evenly among tied maxima.
    Computed as softmax((log(alpha) - max log(alpha)) / q), so tiny q does not overflow.
    """
    q = _check_q(q)
    alpha = torch.as_tensor(alpha)
    if not torch.is_floating_point(alpha):
        alpha = alpha.double()
    if (alpha < 0).any():
        raise ValueError("escort needs alpha >= 0")
    if (alpha.sum(dim=-1) == 0).any():
        raise ValueError("escort needs at least one alpha > 0 along the last dim")
    if q == 0.0:
        is_max = alpha == alpha.amax(dim=-1, keepdim=True)
        return is_max.to(alpha.dtype) / is_max.sum(dim=-1, keepdim=True)
    log_alpha = torch.log(alpha)
    # shift by the max before dividing by q: log(alpha) / 1e-300 would be -inf everywhere (NaN softmax)
    # (in float64: a tiny q would round to 0 in float32 and give 0/0)
    shifted = (log_alpha - log_alpha.amax(dim=-1, keepdim=True)).double()
    return torch.softmax(shifted / q, dim=-1).to(alpha.dtype)
