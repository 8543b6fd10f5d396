"""Dev-set metric against training step, one panel per task, one line per method (mean over seeds).

    python scripts/plot_curves.py OUTPUT_ROOT [-o out.png] [--task T] [--rank R] [--band minmax|std] [--table N]
                                  [--ylim TASK=LOW:HIGH ...]

Reads every ``log.jsonl`` below OUTPUT_ROOT (runs placed by the launcher's layout, else by run_config.json,
as in summarize.py), takes the eval lines' primary metric of the task (MNLI: matched accuracy, CoLA: Matthews
correlation, STS-B: Pearson, others: accuracy; ×100) at each logged step, and draws the mean over seeds with a
band over seeds (min–max by default, or ±1 sample std). Runs still in progress are included. Writes
OUTPUT_ROOT/curves.png (curves_<task>.png with --task) unless -o is given. With --table N it prints instead a
markdown table per task: each method's mean curve at every N-th update and at its last, and its best (update).
--ylim fixes a panel's dev-metric axis (×100), e.g. ``--ylim stsb=70:88`` when one early evaluation far below
the rest would otherwise set its scale; the points it leaves out are named under the panel.

Bad input is skipped, not fatal: the last line of a log.jsonl that a running job is still writing (no
newline and not parseable yet) is left out quietly; any other line that is not a JSON object with an integer
``step`` and a numeric metric (JSON ``true`` is not a number) is left out with one warning per file on stderr;
a run that cannot be placed (or whose run_config.json is unreadable) is skipped with a warning.
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
from summarize import TASK_HEADERS, TASK_METRICS, TASKS, identify_run, metric_problem  # noqa: E402

METRIC_NAMES = {"eval_accuracy": "accuracy", "eval_matthews_correlation": "Matthews corr.",
                "eval_pearson": "Pearson"}


def read_curve(log: Path, key: str) -> dict[int, float]:
    """step -> metric ×100 from the eval lines of one log.jsonl (the last line wins for a repeated step).

    Lines without ``key`` (training lines) are ignored; bad lines are skipped (see the module docstring).
    """
    text = log.read_text(errors="replace")
    lines = text.splitlines()
    curve, bad = {}, []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                break  # the line a running job is writing (or a killed one was): not a bad line
            entry = None
        if not isinstance(entry, dict):
            bad.append(number)
        elif key in entry:
            step = entry.get("step")
            if isinstance(step, int) and not isinstance(step, bool) and metric_problem(entry, key) is None:
                curve[step] = 100.0 * entry[key]
            else:
                bad.append(number)
    if bad:
        print(f"plot_curves: {log}: skipped {len(bad)} bad line(s), not a JSON object with an integer step "
              f"and a numeric {key} (first: line {bad[0]})", file=sys.stderr)
    return curve


def collect(root: Path, task: str | None = None, rank: str | None = None
            ) -> dict[str, dict[str, list[dict[int, float]]]]:
    """task -> "<method> r<rank>" -> one curve per seed, for every log.jsonl under ``root``."""
    curves: dict[str, dict[str, list[dict[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for log in sorted(root.rglob("log.jsonl")):
        try:
            method, run_rank, run_task, _ = identify_run(log.parent)
        except ValueError as e:
            print(f"plot_curves: skipping {log}: {e}", file=sys.stderr)
            continue
        if (task and run_task != task) or (rank and run_rank != rank):
            continue
        try:
            curve = read_curve(log, TASK_METRICS[run_task][0][0])
        except OSError as e:
            print(f"plot_curves: skipping {log}: {e.strerror or e}", file=sys.stderr)
            continue
        if curve:
            curves[run_task][f"{method} r{run_rank}"].append(curve)
    return curves


def logged(root: Path, task: str | None = None, rank: str | None = None
           ) -> tuple[dict[str, dict[str, list[dict[int, float]]]], list[str]]:
    """`collect`'s curves and the tasks that have any, in the tables' order; ValueError if none has."""
    curves = collect(root, task, rank)
    tasks = [t for t in TASKS if t in curves]
    if not tasks:
        raise ValueError(f"no eval lines in any log.jsonl under {root}"
                         + (f" for task {task}" if task else "") + (f" at rank {rank}" if rank else ""))
    return curves, tasks


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


def parse_ylim(spec: str) -> tuple[str, tuple[float, float]]:
    """``TASK=LOW:HIGH`` -> (task, (low, high)); ValueError naming what is wrong."""
    task, _, limits = spec.partition("=")
    if task not in TASKS:
        raise ValueError(f"--ylim {spec!r}: the task must be one of {', '.join(TASKS)}")
    try:
        low, high = (float(x) for x in limits.split(":"))
    except ValueError:
        raise ValueError(f"--ylim {spec!r}: expected TASK=LOW:HIGH with two numbers, e.g. stsb=70:88") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"--ylim {spec!r}: LOW must be below HIGH and both finite")
    return task, (low, high)


def plot_curves(root: Path, out: Path, task: str | None = None, rank: str | None = None,
                kind: str = "minmax", ylims: dict[str, tuple[float, float]] | None = None) -> Path:
    """Draw one panel per task into ``out`` (PNG) and return ``out``; ValueError if nothing was logged.

    ``ylims``: task -> (low, high) of that panel's axis; the mean-curve points outside it are counted in a note.
    """
    curves, tasks = logged(root, task, rank)
    ylims = ylims or {}
    labels = sorted({label for t in tasks for label in curves[t]})
    colours = {label: plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")(i) for i, label in
               enumerate(labels)}
    ncols = min(4, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.6 * ncols, 6.4), 3.6 * nrows), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        key = TASK_METRICS[t][0][0]
        outside = []  # (value, step) of mean-curve points outside a fixed axis
        for label, seed_curves in sorted(curves[t].items()):
            steps, mean, low, high = band(seed_curves, kind)
            if t in ylims:
                lo, hi = ylims[t]
                outside += [(v, s) for s, v in zip(steps.tolist(), mean.tolist()) if not lo <= v <= hi]
            ax.plot(steps, mean, marker="." if len(steps) < 30 else None, color=colours[label],
                    label=f"{label} ({len(seed_curves)} seed{'' if len(seed_curves) == 1 else 's'})")
            if len(seed_curves) > 1:
                ax.fill_between(steps, low, high, color=colours[label], alpha=0.2, linewidth=0)
        ax.set_title(TASK_HEADERS[t].split()[0] + (" (matched)" if t == "mnli" else ""))
        if t in ylims:
            ax.set_ylim(*ylims[t])
            if outside:
                ax.annotate(f"{len(outside)} point{'s' * (len(outside) > 1)} off the axis: "
                            + ", ".join(f"{v:.1f} at {s}" for v, s in sorted(outside, key=lambda p: p[1])[:3])
                            + (", ..." if len(outside) > 3 else ""),
                            xy=(0.02, 0.02), xycoords="axes fraction", fontsize=8, color="0.3")
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


def curve_table(root: Path, every: int, task: str | None = None, rank: str | None = None) -> str:
    """Markdown, one table per task: the mean curve of each method at every `every`-th update and at its last
    logged update, and its best value (update); ValueError if nothing was logged."""
    curves, tasks = logged(root, task, rank)
    out = []
    for t in tasks:
        means = {}  # label -> step -> mean over the seeds that logged it
        for label, seed_curves in sorted(curves[t].items()):
            steps, mean, _, _ = band(seed_curves, "minmax")
            means[label] = dict(zip(steps.tolist(), mean.tolist()))
        last = max(max(m) for m in means.values())
        steps = sorted({s for m in means.values() for s in m if s % every == 0 and s != last}) + [last]
        out += [f"{TASK_HEADERS[t]}, dev metric ×100 (mean over seeds):", "",
                "| run | seeds | " + " | ".join(map(str, steps)) + " | best (update) |",
                "|---" * (len(steps) + 3) + "|"]
        for label, m in means.items():
            best = max(m, key=lambda s: (m[s], -s))  # the earliest of equal bests
            out.append(f"| {label} | {len(curves[t][label])} | " +
                       " | ".join(f"{m[s]:.2f}" if s in m else "" for s in steps) + f" | {m[best]:.2f} ({best}) |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Command line: OUTPUT_ROOT [-o out.png] [--task T] [--rank R] [--band minmax|std] [--table N]
    [--ylim TASK=LOW:HIGH ...]."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("output_root", type=Path)
    p.add_argument("-o", "--output", type=Path)
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--rank", help="only runs of this final rank (2 or 4)")
    p.add_argument("--band", choices=("minmax", "std"), default="minmax")
    p.add_argument("--table", type=int, metavar="N", help="print, instead of drawing, a markdown table of the curves "
                   "at every N-th update and the last, and each one's best")
    p.add_argument("--ylim", action="append", default=[], metavar="TASK=LOW:HIGH",
                   help="fix a task's dev-metric axis (×100), e.g. stsb=70:88; repeatable")
    a = p.parse_args(argv)
    if a.table is not None and a.table < 1:
        p.error(f"--table must be a positive number of updates, got {a.table}")
    try:
        ylims = dict(parse_ylim(spec) for spec in a.ylim)
    except ValueError as e:
        p.error(str(e))
    out = a.output or a.output_root / (f"curves_{a.task}.png" if a.task else "curves.png")
    try:
        if a.table is not None:
            print(curve_table(a.output_root, a.table, a.task, a.rank), end="")
            return 0
        plot_curves(a.output_root, out, a.task, a.rank, a.band, ylims)
    except (ValueError, OSError) as e:
        print(f"plot_curves: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
