"""IVON's trajectory in a run, read from its checkpoints: is the schedule long enough for the posterior?

    python bench/ivon_horizon.py RUN_DIR [RUN_DIR ...]

For every checkpoint ``RUN_DIR/checkpoints/step_<n>/`` of an IVON run (``--checkpointing_steps``), prints one row
per parameter kind, adapters (lora_A/E/B, the elements the posterior scores rank) and the rest (the classification
head): the Hessian's mean, the medians of σ = 1/sqrt(ess (h + δ)), |μ| and |μ|/σ, how widely σ and |μ| vary between
elements (95th over 5th percentile), the share of elements whose last step the clip radius cut, and the RMS
distance of the means from the run's start; with the dev metric logged at that update. A finished run adds a row
"final" for its adapters, read from the saved adapter (adapter_model.safetensors, the kept triplets) and
ivon_state.pt, so a run without checkpoints still shows where its posterior ended; that row has no clip share or
distance (the saved state has neither the step count nor the starting point). This is the evidence behind
scripts/short_horizon.py.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# the numbers the training script logs
from glue_run.ivon_stats import ivon_element_stats, posterior_element_stats  # noqa: E402


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_stats(ckpt: Path) -> dict[str, dict[str, float]]:
    """Per kind ('adapters', 'head'): IVON statistics of one checkpoint."""
    weights = _load(ckpt / "model.pt")
    opt = _load(ckpt / "optimizer.pt")
    start = _load(ckpt / "start_means.pt") if (ckpt / "start_means.pt").is_file() else None
    group = opt["param_groups"][0]
    if "hess" not in group:
        raise ValueError(f"{ckpt}: its optimizer state has no IVON Hessian (not an IVON run)")
    step = opt["state"].get("current_step", 0)
    hess, momentum = group["hess"].float(), group["momentum"].float()
    wd, ess, clip = group["weight_decay"], group["ess"], group["clip_radius"]
    debias = 1.0 - group["beta1"] ** step if step else 1.0
    kinds: dict[str, list[slice]] = {"adapters": [], "head": []}
    offset = 0
    for name, w in weights.items():  # the trainable parameters, in the optimizer's order
        kinds["adapters" if ".lora_" in name else "head"].append(slice(offset, offset + w.numel()))
        offset += w.numel()
    if offset != hess.numel():
        raise ValueError(f"{ckpt}: {offset} trainable elements but an IVON state of {hess.numel()}")
    mu = torch.cat([w.reshape(-1).float() for w in weights.values()])
    out = {}
    for kind, slices in kinds.items():
        if not slices:
            continue
        pick = torch.cat([torch.arange(s.start, s.stop) for s in slices])
        stats = ivon_element_stats(mu[pick], hess[pick], momentum[pick], None if start is None else start[pick],
                                   ess=ess, weight_decay=wd, debias=debias, clip_radius=clip)
        out[kind] = _columns(hess[pick], stats)
    return out


# report's column -> the key of glue_run.ivon_stats' numbers (absent ones, e.g. the distance without a starting
# point, are left out)
_COLUMNS = {"sigma_median": "post_sigma_median", "sigma_spread": "post_sigma_spread",
            "absmu_median": "post_absmu_median", "absmu_spread": "post_absmu_spread", "snr_median": "post_snr_median",
            "clip_fraction": "clip_fraction", "shift_rms": "mean_shift_rms"}


def _columns(hess: torch.Tensor, stats: dict[str, float]) -> dict[str, float]:
    return {"hess_mean": hess.mean().item()} | {col: stats[key] for col, key in _COLUMNS.items() if key in stats}


def final_stats(run: Path) -> dict[str, float] | None:
    """IVON statistics of a finished run's adapters (kept triplets), from its saved adapter and ivon_state.pt;
    None when the run saved no IVON state."""
    from safetensors.torch import load_file

    from glue_run.ivon_files import read_ivon_state

    if not (run / "ivon_state.pt").is_file() or not (run / "adapter_model.safetensors").is_file():
        return None
    saved = read_ivon_state(run / "ivon_state.pt")
    weights = load_file(run / "adapter_model.safetensors")
    mus, hess = [], []
    for name, state in saved["params"].items():  # adapter tensors: "<module>.lora_A.<adapter name>"
        if ".lora_" in name:
            mus.append(weights[name.rsplit(".", 1)[0]].reshape(-1).float())
            hess.append(state["hess"].reshape(-1).float())
    if not mus:
        return None
    h = torch.cat(hess)
    return _columns(h, posterior_element_stats(torch.cat(mus), h, ess=saved["ess"], weight_decay=saved["weight_decay"]))


def eval_by_step(run: Path) -> dict[int, float]:
    """The primary dev metric logged at each update (accuracy, or Pearson / MCC where the task has them)."""
    found = {}
    log = run / "log.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key in ("eval_pearson", "eval_matthews_correlation", "eval_accuracy"):
            if key in rec:
                found[rec["step"]] = rec[key]
                break
    return found


def _row(step: str, kind: str, r: dict[str, float], metric: float | None) -> str:
    clip, shift = r.get("clip_fraction"), r.get("shift_rms")
    return (f"| {step} | {kind} | {r['hess_mean']:.4f} | {r['sigma_median']:.4f} | {r['sigma_spread']:.4f} | "
            f"{r['absmu_median']:.4f} | {r['absmu_spread']:.1f} | {r['snr_median']:.2f} | "
            f"{'' if clip is None else f'{clip:.3f}'} | {'' if shift is None else f'{shift:.4f}'} | "
            f"{'' if metric is None else f'{100 * metric:.2f}'} |")


def report(run: Path) -> str:
    ckpts = sorted((run / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:]))
    evals = eval_by_step(run)
    lines = [f"### {run}", "", "| update | kind | h mean | σ median | σ p95/p5 | \\|μ\\| median | \\|μ\\| p95/p5 | "
             "\\|μ\\|/σ median | clipped | shift RMS | dev metric |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ckpt in ckpts:
        step = int(ckpt.name[5:])
        for kind, r in checkpoint_stats(ckpt).items():
            lines.append(_row(str(step), kind, r, evals.get(step) if kind == "adapters" else None))
    final = final_stats(run)
    if final is not None:
        lines.append(_row("final", "adapters", final, evals[max(evals)] if evals else None))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    runs = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not runs:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for run in runs:
        if not (run / "checkpoints").is_dir() and not (run / "ivon_state.pt").is_file():
            print(f"ivon_horizon: error: {run} has neither checkpoints/ (run with --checkpointing_steps) nor a saved "
                  "IVON state (ivon_state.pt, written when an IVON run ends)", file=sys.stderr)
            return 2
        try:
            text = report(run)
        except ValueError as e:
            print(f"ivon_horizon: error: {e}", file=sys.stderr)
            return 2
        print(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
