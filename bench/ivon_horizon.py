"""IVON's trajectory in a run, read from its checkpoints: is the schedule long enough for the posterior?

    python bench/ivon_horizon.py RUN_DIR [RUN_DIR ...]

For every checkpoint ``RUN_DIR/checkpoints/step_<n>/`` of an IVON run (``--checkpointing_steps``), prints one
row per parameter kind, adapters (lora_A/E/B, the elements the posterior scores rank) and the rest (the
classification head): the Hessian's mean, the medians of σ = 1/sqrt(ess (h + δ)), |μ| and |μ|/σ, the share
of elements whose last step the clip radius cut, and the RMS distance of the means from the run's start;
with the dev metric logged at that update. This is the evidence behind scripts/short_horizon.py.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from glue_run.ivon_stats import ivon_element_stats  # noqa: E402  the numbers the training script logs


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_stats(ckpt: Path) -> dict[str, dict[str, float]]:
    """Per kind ('adapters', 'head'): IVON statistics of one checkpoint."""
    weights = _load(ckpt / "model.pt")
    opt = _load(ckpt / "optimizer.pt")
    start = _load(ckpt / "start_means.pt") if (ckpt / "start_means.pt").is_file() else None
    group = opt["param_groups"][0]
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
        out[kind] = {"hess_mean": hess[pick].mean().item(), "sigma_median": stats["post_sigma_median"],
                     "absmu_median": stats["post_absmu_median"], "snr_median": stats["post_snr_median"],
                     "clip_fraction": stats["clip_fraction"]} | \
            ({"shift_rms": stats["mean_shift_rms"]} if "mean_shift_rms" in stats else {})
    return out


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


def report(run: Path) -> str:
    ckpts = sorted((run / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:]))
    evals = eval_by_step(run)
    lines = [f"### {run}", "", "| update | kind | h mean | σ median | \\|μ\\| median | \\|μ\\|/σ median | clipped | "
             "shift RMS | dev metric |", "|---|---|---|---|---|---|---|---|---|"]
    for ckpt in ckpts:
        step = int(ckpt.name[5:])
        for kind, r in checkpoint_stats(ckpt).items():
            metric = evals.get(step)
            lines.append(f"| {step} | {kind} | {r['hess_mean']:.4f} | {r['sigma_median']:.4f} | "
                         f"{r['absmu_median']:.4f} | {r['snr_median']:.2f} | {r['clip_fraction']:.3f} | "
                         f"{r.get('shift_rms', math.nan):.4f} | "
                         f"{'' if metric is None or kind != 'adapters' else f'{100 * metric:.2f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    runs = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not runs:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for run in runs:
        if not (run / "checkpoints").is_dir():
            print(f"ivon_horizon: error: {run} has no checkpoints/ (run with --checkpointing_steps)", file=sys.stderr)
            return 2
        print(report(run) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
