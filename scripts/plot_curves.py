"""Dev-set metric against training step, one panel per task, one line per method (mean over seeds).

    python scripts/plot_curves.py OUTPUT_ROOT [-o out.png] [--task T] [--rank R] [--band minmax|std]

Reads every ``log.jsonl`` below OUTPUT_ROOT (runs placed by the launcher's layout, else by run_config.json,
as in summarize.py), takes the eval lines' primary metric of the task (MNLI: matched accuracy, CoLA: Matthews
correlation, STS-B: Pearson, others: accuracy; ×100) at each logged step, and draws the mean over seeds with a
band over seeds (min–max by default, or ±1 sample std). Runs still in progress are included. Writes
OUTPUT_ROOT/curves.png (curves_<task>.png with --task) unless -o is given.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summarize import TASK_HEADERS, TASK_METRICS, TASKS, identify_run  # noqa: E402

METRIC_NAMES = {"eval_accuracy": "accuracy", "eval_matthews_correlation": "Matthews corr.",
                "eval_pearson": "Pearson"}


def read_curve(log: Path, key: str) -> dict[int, float]:
    """step -> metric ×100 from the eval lines of one log.jsonl (the last line wins for a repeated step)."""
    curve = {}
    for line in log.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if isinstance(entry.get(key), (int, float)) and "step" in entry:
            curve[int(entry["step"])] = 100.0 * entry[key]
    return curve


def collect(root: Path, task: str | None = None, rank: str | None = None
            ) -> dict[str, dict[str, list[dict[int, float]]]]:
    """task -> "<method> r<rank>" -> one curve per seed, for every log.jsonl under ``root``."""
    curves: dict[str, dict[str, list[dict[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for log in sorted(root.rglob("log.jsonl")):
        ident = identify_run(log.parent)
        if ident is None:
            print(f"plot_curves: skipping {log}: cannot tell its method/task", file=sys.stderr)
            continue
        method, run_rank, run_task, _ = ident
        if (task and run_task != task) or (rank and run_rank != rank):
            continue
        curve = read_curve(log, TASK_METRICS[run_task][0][0])
        if curve:
            curves[run_task][f"{method} r{run_rank}"].append(curve)
    return curves


def band(seed_curves: list[dict[int, float]], kind: str) -> tuple[np.ndarray, ...]:
    """(steps, mean, low, high) over the seeds that logged each step; low/high: min/max or mean ± std."""
    steps = sorted(set().union(*seed_curves))
    mean, low, high = [], [], []
    for s in steps:
        v = np.array([c[s] for c in seed_curves if s in c])
        mean.append(v.mean())
        if kind == "std":
            sd = v.std(ddof=1) if len(v) > 1 else 0.0
            low.append(v.mean() - sd)
            high.append(v.mean() + sd)
        else:
            low.append(v.min())
            high.append(v.max())
    return np.array(steps), np.array(mean), np.array(low), np.array(high)


def plot_curves(root: Path, out: Path, task: str | None = None, rank: str | None = None,
                kind: str = "minmax") -> Path:
    """Draw one panel per task into ``out`` (PNG) and return ``out``; ValueError if nothing was logged."""
    curves = collect(root, task, rank)
    tasks = [t for t in TASKS if t in curves]
    if not tasks:
        raise ValueError(f"no eval lines in any log.jsonl under {root}"
                         + (f" for task {task}" if task else "") + (f" at rank {rank}" if rank else ""))
    labels = sorted({label for t in tasks for label in curves[t]})
    colours = {label: plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")(i) for i, label in
               enumerate(labels)}
    ncols = min(4, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.6 * ncols, 6.4), 3.6 * nrows), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        key = TASK_METRICS[t][0][0]
        for label, seed_curves in sorted(curves[t].items()):
            steps, mean, low, high = band(seed_curves, kind)
            ax.plot(steps, mean, marker="." if len(steps) < 30 else None, color=colours[label],
                    label=f"{label} ({len(seed_curves)} seeds)")
            if len(seed_curves) > 1:
                ax.fill_between(steps, low, high, color=colours[label], alpha=0.2, linewidth=0)
        ax.set_title(TASK_HEADERS[t].split()[0] + (" (matched)" if t == "mnli" else ""))
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if abs(x) >= 10000 else f"{x:g}"))
        ax.set_ylabel(f"dev {METRIC_NAMES.get(key, key)} ×100")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    what = "min–max" if kind == "minmax" else "±1 sample std"
    fig.suptitle(f"Dev metric vs step (line: mean over seeds; band: {what})", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: OUTPUT_ROOT [-o out.png] [--task T] [--rank R] [--band minmax|std]."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("output_root", type=Path)
    p.add_argument("-o", "--output", type=Path)
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--rank", help="only runs of this final rank (2 or 4)")
    p.add_argument("--band", choices=("minmax", "std"), default="minmax")
    a = p.parse_args(argv)
    out = a.output or a.output_root / (f"curves_{a.task}.png" if a.task else "curves.png")
    try:
        plot_curves(a.output_root, out, a.task, a.rank, a.band)
    except (ValueError, OSError) as e:
        print(f"plot_curves: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
