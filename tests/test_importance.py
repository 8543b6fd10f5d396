"""Importance criteria (peft.importance): closed forms, the stable SNR(|θ|), the sensitivity EMA, the registry."""
from __future__ import annotations

import math

import pytest
import torch

from peft.importance import (
    CRITERIA,
    POSTERIOR_SCORES,
    SensitivityScore,
    folded_normal_moments,
    get_criterion,
)

S0 = math.sqrt(2 / math.pi) / math.sqrt(1 - 2 / math.pi)  # SNR(|θ|) at μ = 0


def textbook_moments(mu: torch.Tensor, sigma: torch.Tensor):
    """The paper's formulas, evaluated literally (accurate in float64 for moderate |μ|/σ)."""
    m = mu * torch.erf(mu / (sigma * math.sqrt(2))) + sigma * math.sqrt(2 / math.pi) * torch.exp(-(mu**2) / (2 * sigma**2))
    return m, sigma**2 + mu**2 - m**2


def mp_snr(r: float, dps: int = 60) -> float:
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(dps):
        r = mpmath.mpf(r)
        m = r * mpmath.erf(r / mpmath.sqrt(2)) + mpmath.sqrt(2 / mpmath.pi) * mpmath.exp(-r * r / 2)
        return float(m / mpmath.sqrt(1 + r * r - m * m))


def mp_moments(mu: float, sigma: float, dps: int = 60) -> tuple[float, float]:
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(dps):
        mu, sigma = mpmath.mpf(mu), mpmath.mpf(sigma)
        m = mu * mpmath.erf(mu / (sigma * mpmath.sqrt(2))) + sigma * mpmath.sqrt(2 / mpmath.pi) * mpmath.exp(
            -mu * mu / (2 * sigma * sigma)
        )
        return float(m), float(mu * mu + sigma * sigma - m * m)


@pytest.fixture
def posterior():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(64, 3, generator=g, dtype=torch.float64)
    sigma = torch.rand(64, 3, generator=g, dtype=torch.float64) * 2 + 0.01
    return mu, sigma


# ----------------------------------------------------------------------------------------------- registry
def test_registry_names_and_lookup():
    assert CRITERIA == ("sensitivity", "SNR_mean_abs", "SNR", "mean", "sigma", "E_mean_abs")
    assert get_criterion("sensitivity") is SensitivityScore
    for name, fn in POSTERIOR_SCORES.items():
        assert get_criterion(name) is fn


def test_unknown_criterion_lists_valid_names():
    with pytest.raises(ValueError, match="unknown importance criterion 'snr'") as err:
        get_criterion("snr")
    for name in CRITERIA:
        assert repr(name) in str(err.value)


def test_adding_a_criterion_is_one_registry_line(monkeypatch):
    monkeypatch.setitem(POSTERIOR_SCORES, "mu_squared", lambda mu, sigma: mu**2)
    assert get_criterion("mu_squared")(torch.tensor([3.0]), torch.tensor([1.0])).item() == 9.0


# --------------------------------------------------------------------------------------------- closed forms
def test_simple_scores_equal_closed_forms(posterior):
    mu, sigma = posterior
    torch.testing.assert_close(POSTERIOR_SCORES["SNR"](mu, sigma), mu.abs() / sigma, rtol=0, atol=0)
    torch.testing.assert_close(POSTERIOR_SCORES["mean"](mu, sigma), mu.abs(), rtol=0, atol=0)
    torch.testing.assert_close(POSTERIOR_SCORES["sigma"](mu, sigma), 1 / sigma, rtol=0, atol=0)


def test_folded_moments_and_scores_equal_textbook_formulas(posterior):
    mu, sigma = posterior  # |μ|/σ up to ~300: the literal formulas are accurate to ~1e-10 in float64
    m_ref, v_ref = textbook_moments(mu, sigma)
    mean_abs, var_abs = folded_normal_moments(mu, sigma)
    assert mean_abs.dtype == var_abs.dtype == torch.float64
    torch.testing.assert_close(mean_abs, m_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(var_abs, v_ref, rtol=1e-8, atol=0)
    torch.testing.assert_close(POSTERIOR_SCORES["E_mean_abs"](mu, sigma), m_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(POSTERIOR_SCORES["SNR_mean_abs"](mu, sigma), m_ref / v_ref.sqrt(), rtol=1e-8, atol=0)


def test_folded_moments_match_high_precision_reference():
    mus = [0.0, 1e-9, -0.3, 1.0, -2.5, 7.0, 40.0, -1e3, 1e6]
    sigmas = [1.0, 0.5, 2.0, 1e-3]
    mu = torch.tensor([m for m in mus for _ in sigmas], dtype=torch.float64)
    sigma = torch.tensor([s for _ in mus for s in sigmas], dtype=torch.float64)
    mean_abs, var_abs = folded_normal_moments(mu, sigma)
    for i in range(len(mu)):
        m_ref, v_ref = mp_moments(mu[i].item(), sigma[i].item())
        assert mean_abs[i].item() == pytest.approx(m_ref, rel=1e-13)
        assert var_abs[i].item() == pytest.approx(v_ref, rel=1e-12)


def test_sigma_zero_and_zero_zero_are_finite():
    mean_abs, var_abs = folded_normal_moments(torch.tensor([2.0, -3.0, 0.0]), torch.tensor([0.0, 0.0, 0.0]))
    assert mean_abs.tolist() == [2.0, 3.0, 0.0]
    assert var_abs.tolist() == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------ SNR_mean_abs numerics
def test_snr_mean_abs_at_zero_mean_for_any_sigma():
    sigma = torch.tensor([1e-6, 0.01, 1.0, 30.0])
    got = POSTERIOR_SCORES["SNR_mean_abs"](torch.zeros(4), sigma)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.full((4,), S0), rtol=1e-7, atol=0)
    assert got[0].item() == pytest.approx(1.32361, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_snr_mean_abs_is_finite_and_nondecreasing_on_a_dense_grid(dtype):
    snr = POSTERIOR_SCORES["SNR_mean_abs"]
    grids = [
        torch.linspace(0, 2, 400_001, dtype=torch.float64),  # the flat region near 0 (score − s0 ∝ r⁴)
        torch.linspace(0.0499, 0.0501, 100_001, dtype=torch.float64),  # around the series/closed-form switch
        torch.logspace(-3, 6, 400_001, dtype=torch.float64),  # up to very confident weights
    ]
    for r in grids:
        r = r.to(dtype)
        s = snr(r * 0.37, torch.full_like(r, 0.37))  # a function of |μ|/σ only
        assert torch.isfinite(s).all()
        assert (s > 0).all()
        assert (s.diff() >= 0).all(), f"decreasing at r={r[1:][s.diff() < 0][:3].tolist()}"
    assert snr(torch.tensor([1e6]), torch.tensor([1.0])).item() == pytest.approx(1e6, rel=1e-7)


def test_snr_mean_abs_matches_high_precision_reference():
    r = torch.cat([torch.zeros(1), torch.logspace(-6, 6, 241, dtype=torch.float64)])
    got = POSTERIOR_SCORES["SNR_mean_abs"](-r, torch.ones_like(r))
    ref = torch.tensor([mp_snr(x) for x in r.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=0)
    got32 = POSTERIOR_SCORES["SNR_mean_abs"](r.float(), torch.ones_like(r).float())
    torch.testing.assert_close(got32.double(), ref, rtol=2e-7, atol=0)


def test_literal_float32_formula_fails_where_the_stable_one_does_not():
    """README, fixed defect 4: the original code's float32 evaluation is inf/NaN(→0) for confident weights."""
    mu, sigma = torch.tensor([1e4, 3e3, 2e2]), torch.ones(3)
    m, v = textbook_moments(mu, sigma)
    literal = m / v.sqrt()
    assert literal[0].item() == math.inf  # σ² + μ² − m² rounds to 0 in float32
    torch.testing.assert_close(POSTERIOR_SCORES["SNR_mean_abs"](mu, sigma), mu, rtol=1e-7, atol=0)


def test_scores_keep_float32_dtype_and_shape():
    torch.manual_seed(0)
    mu, sigma = torch.randn(5, 1), torch.rand(5, 1) + 0.1
    for name, fn in POSTERIOR_SCORES.items():
        out = fn(mu, sigma)
        assert out.shape == (5, 1) and out.dtype == torch.float32, name


# ------------------------------------------------------------------------------------------- sensitivity
def test_sensitivity_ema_matches_hand_computation_over_three_steps():
    b1, b2 = 0.85, 0.5
    score = SensitivityScore(b1, b2)
    p = torch.nn.Parameter(torch.tensor([2.0, -1.0], dtype=torch.float64))
    steps = [([1.0, 3.0], [0.5, 0.5]), ([3.0, -1.0], [-1.0, 2.0]), ([2.0, 0.0], [0.25, -4.0])]
    ibar, u = [0.0, 0.0], [0.0, 0.0]
    for value, grad in steps:
        with torch.no_grad():
            p.copy_(torch.tensor(value, dtype=torch.float64))
        p.grad = torch.tensor(grad, dtype=torch.float64)
        score.update("x.lora_A.default", p)
        for j in range(2):
            i = abs(value[j] * grad[j])
            ibar[j] = b1 * ibar[j] + (1 - b1) * i
            u[j] = b2 * u[j] + (1 - b2) * abs(i - ibar[j])
    # step 1: I = [0.5, 1.5]; Ī = [0.075, 0.225]; U = [0.2125, 0.6375]
    assert score.score("x.lora_A.default").tolist() == pytest.approx([ibar[0] * u[0], ibar[1] * u[1]], rel=1e-14)
    assert score.exp_avg_ipt["x.lora_A.default"].tolist() == pytest.approx(ibar, rel=1e-14)
    assert score.exp_avg_unc["x.lora_A.default"].tolist() == pytest.approx(u, rel=1e-14)


def test_sensitivity_state_dict_round_trip_is_a_copy():
    a = SensitivityScore(0.85, 0.85)
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    p.grad = torch.tensor([3.0, -1.0])
    a.update("p", p)
    b = SensitivityScore(0.5, 0.5)
    b.load_state_dict(a.state_dict())
    assert (b.beta1, b.beta2) == (0.85, 0.85)
    a.update("p", p)
    b.update("p", p)
    assert torch.equal(a.score("p"), b.score("p"))
    b.reset()
    assert len(b) == 0 and "p" in a


def test_sensitivity_errors():
    with pytest.raises(ValueError, match="beta1 must lie strictly between 0 and 1, got 1.0"):
        SensitivityScore(1.0, 0.5)
    with pytest.raises(ValueError, match="beta2 must lie strictly between 0 and 1, got 0"):
        SensitivityScore(0.5, 0)
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"'m.lora_E.default' has no gradient .*after optimizer.step\(\) and before "
                       r"optimizer.zero_grad\(\)"):
        SensitivityScore(0.5, 0.5).update("m.lora_E.default", p)
