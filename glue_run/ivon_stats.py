"""IVON's statistics for the log: how the posterior and the steps compare with the weights, which is what says
whether a schedule is long enough for IVON (scripts/short_horizon.py, bench/ivon_horizon.py).
"""
from __future__ import annotations

import torch


@torch.no_grad()
def posterior_stats(run) -> dict[str, float]:
    """How IVON's posterior and steps compare with the weights, over the adapter elements (lora_A/E/B; every
    trainable element for full fine-tuning), the ones the posterior scores rank:

    * ``post_sigma_median``, ``post_absmu_median``, ``post_snr_median``: medians of σ, |μ| and |μ|/σ;
    * ``post_sigma_spread``, ``post_absmu_spread``: the 95th over the 5th percentile of σ and of |μ|. While σ
      hardly varies between elements (IVON's Hessian still near hess_init), |μ|/σ ranks them as |μ| does, and
      1/σ ranks them by the small differences IVON's curvature estimates have made so far;
    * ``clip_fraction``: share of elements whose last step was cut by the clip radius, i.e.
      |(m/d + δμ)/(h + δ)| >= clip_radius, recomputed from the state after the step;
    * ``mean_shift_rms``: the root mean square distance of the means from where this run started (its first
      update's starting point, kept in checkpoints), and ``mean_shift_rel``, that distance over the RMS of
      the starting means.
    These are the quantities that say whether a schedule is long enough for IVON (scripts/short_horizon.py).
    """
    opt = run.ivon
    names = {id(p): n for n, p in run.peft_model.named_parameters()}
    adapters = any(".lora_" in n for n in names.values())
    # The script builds IVON with one parameter group (its build_optimizer), so one set of hyperparameters.
    group = opt.param_groups[0]
    debias = (1.0 - group["beta1"] ** opt.current_step) if opt.current_step else 1.0
    parts, offset = {"mu": [], "hess": [], "momentum": [], "start": []}, 0
    for p in group["params"]:
        n = p.numel()
        if not adapters or ".lora_" in names.get(id(p), ""):
            mu, st = p.detach().reshape(-1).float(), opt.param_state(p)
            parts["mu"].append(mu)
            parts["hess"].append(st["hess"].reshape(-1).float())
            parts["momentum"].append(st["momentum"].reshape(-1).float())
            if run.start_means is not None:
                parts["start"].append(run.start_means[offset:offset + n].to(mu.device))
        offset += n
    if not parts["mu"]:
        return {}
    return ivon_element_stats(torch.cat(parts["mu"]), torch.cat(parts["hess"]), torch.cat(parts["momentum"]),
                              torch.cat(parts["start"]) if parts["start"] else None, ess=opt.param_groups[0]["ess"],
                              weight_decay=opt.param_groups[0]["weight_decay"], debias=debias,
                              clip_radius=opt.param_groups[0]["clip_radius"])


def spread(x: torch.Tensor) -> float:
    """The 95th over the 5th percentile of a flat non-negative tensor (inf when the 5th is 0); nearest-rank
    percentiles by kthvalue, which, unlike torch.quantile, takes any size (full fine-tuning's 22M elements)."""
    n = x.numel()
    low, high = (x.kthvalue(max(1, min(n, round(q * n)))).values.item() for q in (0.05, 0.95))
    return high / low if low > 0 else float("inf")


def posterior_element_stats(mu: torch.Tensor, hess: torch.Tensor, *, ess: float,
                            weight_decay: float) -> dict[str, float]:
    """The posterior's part of posterior_stats (the ``post_*`` numbers) from flat float tensors of means and
    Hessian: what a saved adapter and its IVON state still tell, without momentum or a starting point."""
    sigma = 1.0 / torch.sqrt(ess * (hess + weight_decay))
    return {"post_sigma_median": sigma.median().item(), "post_absmu_median": mu.abs().median().item(),
            "post_snr_median": (mu.abs() / sigma).median().item(), "post_sigma_spread": spread(sigma),
            "post_absmu_spread": spread(mu.abs())}


def ivon_element_stats(mu: torch.Tensor, hess: torch.Tensor, momentum: torch.Tensor, start: torch.Tensor | None, *,
                       ess: float, weight_decay: float, debias: float, clip_radius: float) -> dict[str, float]:
    """posterior_stats' numbers from flat float tensors of means, Hessian, momentum and starting means (None:
    no distance), for one set of IVON hyperparameters; bench/ivon_horizon.py computes them from checkpoints."""
    clipped = ((momentum / debias + weight_decay * mu) / (hess + weight_decay)).abs() >= clip_radius
    stats = posterior_element_stats(mu, hess, ess=ess, weight_decay=weight_decay)
    stats["clip_fraction"] = clipped.float().mean().item()
    if start is not None:
        stats["mean_shift_rms"] = (mu - start).square().mean().sqrt().item()
        stats["mean_shift_rel"] = stats["mean_shift_rms"] / max(start.square().mean().sqrt().item(), 1e-30)
    return stats


def trainable_flat(run) -> torch.Tensor:
    """The trainable parameters as one float32 vector on the CPU, in IVON's order (the start of the means)."""
    return torch.cat([p.detach().reshape(-1).float().cpu() for g in run.ivon.param_groups for p in g["params"]])
