"""Importance scores that decide which AdaLoRA triplets survive pruning.

Two kinds of criterion:

* ``"sensitivity"`` (AdaLoRA, Zhang et al. 2023): a stateful exponential moving average of ``|θ ⊙ ∇θ|``
  times a moving average of its fluctuation, kept by :class:`SensitivityScore`.
* Posterior scores (VILoRA, Chen & Garner 2024): plain functions ``score(mu, sigma) -> Tensor`` of the
  variational posterior ``θ ~ N(μ, σ²)`` that IVON keeps per parameter. They live in
  :data:`POSTERIOR_SCORES`; adding a criterion is one function and one line in that dict.

Numerics of the folded normal (README, fixed defect 4)
------------------------------------------------------
For ``θ ~ N(μ, σ²)`` the textbook moments of ``|θ|`` are

    E|θ|   = μ·erf(μ/(σ√2)) + σ·√(2/π)·exp(−μ²/(2σ²))
    Var|θ| = μ² + σ² − (E|θ|)²

Evaluated literally, ``Var|θ|`` cancels catastrophically once ``r = |μ|/σ`` is large (relative error
≈ eps·r²): in float32 the default VILoRA score became inf, or NaN that was then zeroed, so the most
certain weights were pruned first. Here everything is written in terms of ``r`` and of

    Q(r) = φ(r) − r·Φ̄(r)          (φ: standard normal pdf, Φ̄ = 1 − Φ = erfc(r/√2)/2),

a positive, decreasing function (Q(0) = 1/√(2π), Q(r) ≈ φ(r)/r² for large r). Substituting
``erf(r/√2) = 1 − 2Φ̄(r)`` gives, exactly,

    E|θ|   = |μ| + 2σ·Q(r)
    Var|θ| = σ²·(1 − 4·Q(r)·(r + Q(r)))
    E|θ| / Std|θ| = (r + 2Q) / √(1 − 4Q(r + Q)).

``1 − 4Q(r+Q)`` = Var|θ|/σ² rises from ``1 − 2/π ≈ 0.363`` (r = 0) to 1, so it never cancels badly.
Q itself is computed as ``φ(r) − r·Φ̄(r)``, which loses ~r² ulps for large r, but that error is of order
eps·φ(r) in absolute terms, far below the ``r`` it is added to. For r ≳ 38.5, Q underflows to exactly 0 and
the score is exactly r (the asymptote: Var|θ| → σ², E|θ| → |μ|). Evaluation is in float64 and the result
is cast back to the inputs' dtype (at least float32).

Near r = 0 the score is extremely flat (its r² coefficient vanishes: s(r) = s₀ + 0.3035·r⁴ − …), so the
closed form's rounding noise (~1e-16) would exceed the true increments between close grid points and
break monotonicity; for r < 0.05 the Taylor series (through r¹⁰, truncation error < 1e-15) is used.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "CRITERIA",
    "POSTERIOR_SCORES",
    "SensitivityScore",
    "folded_normal_moments",
    "get_criterion",
    "snr_mean_abs",
]

# Taylor coefficients of E|z|/Std|z| for z ~ N(r, 1) around r = 0 (even powers; the r² term is exactly 0),
# obtained symbolically. s0 = √(2/π)/√(1 − 2/π) = √(2/(π − 2)).
_SNR_SERIES = (
    math.sqrt(2.0 / (math.pi - 2.0)),  # r^0  = 1.3236080967885126...
    0.3035406616673484445681,  # r^4
    -0.3642487940008181334818,  # r^6
    0.4274696400358125865379,  # r^8
    -0.5040299222477409455384,  # r^10
)
_SERIES_BELOW = 0.05
# Q(r) is below float64's smallest subnormal for r > ~38.5; clamping r keeps r·erfc(...) away from inf·0.
_Q_CLAMP = 40.0


def _result_dtype(mu: Tensor, sigma: Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(mu.dtype, sigma.dtype), torch.float32)


def _ratio_and_q(mu: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Float64 ``|μ|``, ``σ``, ``r = |μ|/σ`` (0 where μ = σ = 0), ``min(r, 40)`` and ``Q(r) = φ(r) − r·Φ̄(r)``.

    ``Q(r)`` is exactly 0 in float64 from r ≈ 38.5, so Q-terms use the clamped r (finite even for σ = 0).
    """
    abs_mu = mu.detach().to(torch.float64).abs()
    sigma = sigma.detach().to(torch.float64)
    r = abs_mu / sigma
    r = torch.where(torch.isnan(r), torch.zeros_like(r), r)
    rc = r.clamp(max=_Q_CLAMP)
    q = torch.exp(-0.5 * rc * rc) / math.sqrt(2.0 * math.pi) - rc * 0.5 * torch.special.erfc(rc / math.sqrt(2.0))
    return abs_mu, sigma, r, rc, q


def folded_normal_moments(mu: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``|θ|`` for ``θ ~ N(μ, σ²)`` (element-wise, broadcasting).

    ``E|θ| = |μ| + 2σ·Q(r)`` and ``Var|θ| = σ²·(1 − 4Q(r)(r + Q(r)))`` with ``r = |μ|/σ``, which equal the
    paper's ``μ·erf(μ/(σ√2)) + σ√(2/π)·exp(−μ²/2σ²)`` and ``μ² + σ² − (E|θ|)²`` but do not cancel for large r
    (see the module docstring). Requires σ ≥ 0; σ = 0 gives ``(|μ|, 0)``.

    Returns:
        ``(mean_abs, var_abs)``, shaped like the broadcast of the inputs, dtype of the inputs (≥ float32).
    """
    dtype = _result_dtype(mu, sigma)
    abs_mu, sigma64, _, rc, q = _ratio_and_q(mu, sigma)
    mean_abs = abs_mu + 2.0 * sigma64 * q
    var_abs = sigma64 * sigma64 * (1.0 - 4.0 * q * (rc + q))
    return mean_abs.to(dtype), var_abs.to(dtype)


def snr_mean_abs(mu: Tensor, sigma: Tensor) -> Tensor:
    """``E|θ| / Std|θ|`` for ``θ ~ N(μ, σ²)``: VILoRA's default score ("SNR(|θ|)").

    A function of ``r = |μ|/σ`` only: ``(r + 2Q)/√(1 − 4Q(r + Q))``; ≈ 1.32361 at μ = 0, → r for large r,
    finite and non-decreasing in r (Taylor series below r = 0.05, see the module docstring).
    """
    dtype = _result_dtype(mu, sigma)
    _, _, r, rc, q = _ratio_and_q(mu, sigma)
    closed = (r + 2.0 * q) / torch.sqrt(1.0 - 4.0 * q * (rc + q))
    r2 = r * r
    s0, s4, s6, s8, s10 = _SNR_SERIES
    series = s0 + r2 * r2 * (s4 + r2 * (s6 + r2 * (s8 + r2 * s10)))
    return torch.where(r < _SERIES_BELOW, series, closed).to(dtype)


def expected_abs(mu: Tensor, sigma: Tensor) -> Tensor:
    """``E|θ|`` for ``θ ~ N(μ, σ²)`` (folded-normal mean)."""
    return folded_normal_moments(mu, sigma)[0]


def snr(mu: Tensor, sigma: Tensor) -> Tensor:
    """``|μ| / σ``: signal-to-noise ratio of θ."""
    return mu.detach().abs() / sigma.detach()


def magnitude(mu: Tensor, sigma: Tensor) -> Tensor:
    """``|μ|``: posterior mean magnitude (σ unused)."""
    return mu.detach().abs()


def precision(mu: Tensor, sigma: Tensor) -> Tensor:
    """``1 / σ``: posterior precision only (μ unused, broadcast to μ's shape)."""
    return torch.broadcast_to(1.0 / sigma.detach(), torch.broadcast_shapes(mu.shape, sigma.shape)).clone()


# name (as in --vilora_criterion / VILoraConfig.criterion) -> score(mu, sigma); higher = more important.
POSTERIOR_SCORES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "SNR_mean_abs": snr_mean_abs,
    "SNR": snr,
    "mean": magnitude,
    "sigma": precision,
    "E_mean_abs": expected_abs,
}

# Scores whose value for an element depends on that element's (μ, σ) only. The rank allocator evaluates
# these once over all adapter tensors concatenated (far fewer kernel launches); any other score, e.g. one
# a user adds that normalises per tensor, is called tensor by tensor.
ELEMENTWISE_SCORES: frozenset[Callable[[Tensor, Tensor], Tensor]] = frozenset(
    {snr_mean_abs, snr, magnitude, precision, expected_abs}
)

SENSITIVITY = "sensitivity"
CRITERIA: tuple[str, ...] = (SENSITIVITY, *POSTERIOR_SCORES)


def get_criterion(name: str) -> Callable[[Tensor, Tensor], Tensor] | type[SensitivityScore]:
    """Look up a criterion: the score function for posterior names, :class:`SensitivityScore` for "sensitivity".

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name == SENSITIVITY:
        return SensitivityScore
    if name in POSTERIOR_SCORES:
        return POSTERIOR_SCORES[name]
    valid = ", ".join(repr(n) for n in (SENSITIVITY, *POSTERIOR_SCORES))
    raise ValueError(f"unknown importance criterion {name!r}; valid criteria: {valid}")


class SensitivityScore:
    """AdaLoRA's smoothed sensitivity, as PEFT's ``RankAllocator`` keeps it, one state per parameter name.

    For a parameter θ with gradient ∇θ (AdaLoRA paper, eqs. 8–10)::

        I = |θ ⊙ ∇θ|
        Ī ← β1·Ī + (1 − β1)·I          (no bias correction)
        U ← β2·U + (1 − β2)·|I − Ī|    (with the already updated Ī)
        score = Ī ⊙ U

    State starts at zeros of θ's shape on the first update of a name.
    """

    def __init__(self, beta1: float, beta2: float) -> None:
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 < beta < 1.0:
                raise ValueError(f"{name} must lie strictly between 0 and 1, got {beta}")
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.exp_avg_ipt: dict[str, Tensor] = {}
        self.exp_avg_unc: dict[str, Tensor] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.exp_avg_ipt

    def __len__(self) -> int:
        return len(self.exp_avg_ipt)

    @torch.no_grad()
    def update(self, name: str, param: Tensor) -> None:
        """Fold ``|θ ⊙ ∇θ|`` of ``param`` (current value and ``.grad``) into the EMAs stored under ``name``."""
        if param.grad is None:
            raise ValueError(
                f"parameter {name!r} has no gradient (grad is None): update_and_allocate must be called after "
                "optimizer.step() and before optimizer.zero_grad()"
            )
        ipt = (param.detach() * param.grad).abs()
        if name not in self.exp_avg_ipt:
            self.exp_avg_ipt[name] = torch.zeros_like(ipt)
            self.exp_avg_unc[name] = torch.zeros_like(ipt)
        avg = self.exp_avg_ipt[name]
        avg.mul_(self.beta1).add_(ipt, alpha=1.0 - self.beta1)
        self.exp_avg_unc[name].mul_(self.beta2).add_((ipt - avg).abs(), alpha=1.0 - self.beta2)

    def score(self, name: str) -> Tensor:
        """Element score ``Ī ⊙ U`` of ``name`` (KeyError if it was never updated)."""
        return self.exp_avg_ipt[name] * self.exp_avg_unc[name]

    def reset(self) -> None:
        """Forget all state (AdaLoRA's ``reset_ipt``)."""
        self.exp_avg_ipt.clear()
        self.exp_avg_unc.clear()

    def state_dict(self) -> dict:
        """torch.save-able copy of the state."""
        return {
            "beta1": self.beta1,
            "beta2": self.beta2,
            "exp_avg_ipt": {k: v.clone() for k, v in self.exp_avg_ipt.items()},
            "exp_avg_unc": {k: v.clone() for k, v in self.exp_avg_unc.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (tensors are copied)."""
        if set(state["exp_avg_ipt"]) != set(state["exp_avg_unc"]):
            raise ValueError("sensitivity state is inconsistent: exp_avg_ipt and exp_avg_unc have different names")
        self.beta1 = float(state["beta1"])
        self.beta2 = float(state["beta2"])
        self.exp_avg_ipt = {k: v.clone() for k, v in state["exp_avg_ipt"].items()}
        self.exp_avg_unc = {k: v.clone() for k, v in state["exp_avg_unc"].items()}
