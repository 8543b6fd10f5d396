"""Collect finished GLUE runs under an output root into the paper's results table.

    python scripts/summarize.py OUTPUT_ROOT [--no-merge]

Finds every ``all_results.json`` below OUTPUT_ROOT, reads method, rank, task and seed from the launcher's
layout ``<method>[-<criterion>]/rank<R>/<task>/seed<S>/`` (falling back to ``run_config.json`` for runs
stored elsewhere), and prints a markdown table (also written to OUTPUT_ROOT/summary.md) with one row per
method and rank: per task the mean ± sample standard deviation (ddof=1) over seeds and the seed count,
metrics ×100, and the GLUE average as the AdaLoRA paper computes it, followed by the AdaLoRA paper's
published DeBERTaV3-base rows. OUTPUT_ROOT/summary.csv holds the same numbers in long form.

By default a method and its ``_clr`` variant (the same method on CoLA, STS-B, MRPC and RTE, with IVON's
custom LR schedule) share a row, and so do ``full`` and ``full_ivon`` (STS-B), as in the paper's tables;
``--no-merge`` shows every method directory as its own row.

Bad runs do not stop the table. A run is skipped, with its path and the reason on one line of stderr and under
"Skipped runs" in summary.md, when its all_results.json (or the run_config.json that places it) is unreadable,
truncated, empty or not a JSON object, when a metric is missing or not a number (JSON ``true`` is not 100),
or when it repeats a (method, rank, task, seed) already read: seeds are integers, so ``seed02`` is seed 2, and
the first path in sorted order is kept. A NaN metric (the training script writes a bare ``NaN``, e.g. a
Pearson correlation of constant predictions) is kept: the mean over seeds, and the GLUE average, are then
``nan`` and such runs are listed under "Runs with a NaN metric". summary.md and summary.csv are replaced
atomically (a temporary file beside them, then os.replace), so a symlink in their place is replaced, not
written through.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from glue_run.files import write_atomic  # noqa: E402  the training script's one atomic writer

# Per task: (all_results.json key, label) of the numbers the paper reports, in the paper's column order.
TASK_METRICS: dict[str, list[tuple[str, str]]] = {
    "mnli": [("eval_accuracy", "m"), ("eval_accuracy_mm", "mm")],
    "sst2": [("eval_accuracy", "acc")],
    "cola": [("eval_matthews_correlation", "mcc")],
    "qqp": [("eval_accuracy", "acc"), ("eval_f1", "F1")],
    "qnli": [("eval_accuracy", "acc")],
    "rte": [("eval_accuracy", "acc")],
    "mrpc": [("eval_accuracy", "acc")],
    "stsb": [("eval_pearson", "pearson")],
}
TASK_HEADERS = {"mnli": "MNLI m/mm", "sst2": "SST-2", "cola": "CoLA", "qqp": "QQP acc/F1", "qnli": "QNLI",
                "rte": "RTE", "mrpc": "MRPC acc", "stsb": "STS-B Pearson"}
TASKS = list(TASK_METRICS)

# AdaLoRA paper (Zhang et al., ICLR 2023), Table 1: DeBERTaV3-base on the GLUE dev sets, mean of 5 seeds.
PAPER_ROWS: list[tuple[str, str, dict[str, list[float]], float]] = [
    ("Full FT", "184M", {"mnli": [89.90, 90.12], "sst2": [95.63], "cola": [69.19], "qqp": [92.40, 89.80],
                         "qnli": [94.03], "rte": [83.75], "mrpc": [89.46], "stsb": [91.60]}, 88.09),
    ("LoRA r=2", "0.33M", {"mnli": [90.30, 90.38], "sst2": [94.95], "cola": [68.71], "qqp": [91.61, 88.91],
                           "qnli": [94.03], "rte": [85.56], "mrpc": [89.71], "stsb": [91.68]}, 88.15),
    ("AdaLoRA (final avg rank 2)", "0.32M", {"mnli": [90.66, 90.70], "sst2": [95.80], "cola": [70.04],
                                             "qqp": [91.78, 89.16], "qnli": [94.49], "rte": [87.36],
                                             "mrpc": [90.44], "stsb": [91.63]}, 88.86),
    ("LoRA r=8", "1.33M", {"mnli": [90.65, 90.69], "sst2": [94.95], "cola": [69.82], "qqp": [91.99, 89.38],
                           "qnli": [93.87], "rte": [85.20], "mrpc": [89.95], "stsb": [91.60]}, 88.34),
    ("AdaLoRA (1.27M budget)", "1.27M", {"mnli": [90.76, 90.79], "sst2": [96.10], "cola": [71.45],
                                         "qqp": [92.23, 89.74], "qnli": [94.55], "rte": [88.09],
                                         "mrpc": [90.69], "stsb": [91.84]}, 89.31),
]

# Row order of the methods the sweep scripts produce; anything else follows alphabetically.
METHOD_ORDER = ["full", "full_ivon", "lora_all", "adalora", "adalora_ivon", "adalora_ivon_clr", "vilora",
                "vilora_clr", "vilora_criterion", "vilora_clr_criterion"]
LAYOUT = re.compile(r"rank(\d+)")


@dataclass
class Run:
    """One finished run: where it came from and its reported numbers (already ×100, NaN kept)."""

    method: str
    rank: str
    task: str
    seed: str  # the seed as a plain integer ("2" for a seed02/ folder)
    values: list[float]
    path: Path
    results: dict = field(default_factory=dict, repr=False)  # all of its all_results.json


@dataclass
class Cell:
    """The runs of one (method row, task): per-metric mean and sample std over seeds."""

    runs: list[Run] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.runs)

    def means(self) -> list[float]:
        return [statistics.fmean(v) for v in zip(*(r.values for r in self.runs))]

    def stds(self) -> list[float]:
        """Sample standard deviation (ddof=1) per metric; NaN for a single seed or a non-finite value."""
        return [statistics.stdev(v) if len(v) > 1 and all(map(math.isfinite, v)) else math.nan
                for v in zip(*(r.values for r in self.runs))]

    def score(self) -> float:
        """The task's number in the GLUE average: MNLI mean(m, mm), QQP mean(acc, F1), else the metric."""
        return statistics.fmean(self.means())


def method_from_config(cfg: dict) -> tuple[str, str]:
    """(method, rank) of a run from its run_config.json, named like the sweep scripts' directories."""
    lora_type = cfg.get("lora_type") if cfg.get("apply_lora") else None
    clr = "_clr" if cfg.get("use_custom_lr_schedule") else ""
    if lora_type is None:
        return ("full_ivon" if cfg.get("use_ivon") else "full"), "2"
    if lora_type == "lora":
        return "lora_all", str(cfg.get("lora_r"))
    rank = str(cfg.get("adalora_target_r"))
    if lora_type == "adalora":
        return ("adalora_ivon" + clr if cfg.get("use_ivon") else "adalora"), rank
    criterion = cfg.get("vilora_criterion") or "SNR_mean_abs"
    if criterion == "SNR_mean_abs":
        return "vilora" + clr, rank
    return f"vilora{clr}_criterion-{criterion}", rank


def read_json_object(path: Path) -> dict:
    """The JSON object in ``path``; ValueError naming the file if it is unreadable, not JSON, or not an object.

    Bare NaN/Infinity are accepted: Python's json writes them, and the training script's metrics can be NaN.
    """
    try:
        obj = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"{path.name} cannot be read ({e.strerror or e})") from None
    except ValueError as e:  # also UnicodeDecodeError
        raise ValueError(f"{path.name} is not valid JSON (empty or truncated?): {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path.name} is not a JSON object but {type(obj).__name__}")
    return obj


def _int_seed(value: object) -> str | None:
    """A seed as the decimal string of its integer value ("02" -> "2"); None if it is not an integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return str(int(value))
    return str(value) if isinstance(value, int) else None


def identify_run(run_dir: Path, results: dict | None = None) -> tuple[str, str, str, str]:
    """(method, rank, task, seed) from the path layout, else from run_config.json (and the run's
    all_results.json, if given); ValueError saying why if neither works."""
    results = results or {}
    parts = run_dir.parts
    if len(parts) >= 4:
        method, rank, task, seed = parts[-4:]
        m = LAYOUT.fullmatch(rank)
        if m and task in TASK_METRICS and re.fullmatch(r"seed[0-9]+", seed):
            return method, m.group(1), task, _int_seed(seed[4:])
    cfg_path = run_dir / "run_config.json"
    if not cfg_path.is_file():
        raise ValueError("neither the directory layout nor run_config.json says which method/task it is")
    top = read_json_object(cfg_path)
    cfg = top.get("args", top)  # resolved CLI args, possibly nested under "args"
    if not isinstance(cfg, dict):
        raise ValueError("run_config.json: 'args' is not a JSON object")
    task = results.get("task_name") or cfg.get("task_name")
    if not isinstance(task, str) or task not in TASK_METRICS:
        raise ValueError(f"task {repr(task)[:40]} (from all_results.json or run_config.json) is not a GLUE task here")
    # The resolved seed: all_results.json's, else run_config.json's (top level: a random seed is chosen
    # there when --seed was not given).
    raw_seed = next((d["seed"] for d in (results, top, cfg) if d.get("seed") is not None), None)
    seed = _int_seed(raw_seed)
    if seed is None:
        raise ValueError(f"seed {raw_seed!r} (from all_results.json or run_config.json) is not an integer")
    method, rank = method_from_config(cfg)
    return method, rank, task, seed


def _shown(path: Path) -> str:
    """A path on one line: control characters in a folder name are escaped."""
    text = str(path)
    return text if text.isprintable() else ascii(text)


def metric_problem(results: dict, key: str) -> str | None:
    """Why ``results[key]`` is not a usable metric, or None. NaN is usable: it is reported, not dropped."""
    if key not in results:
        return f"no {key}"
    value = results[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key} is {json.dumps(value)[:40]}, not a number"
    return None


def find_runs(root: Path, skipped: list[tuple[Path, str]] | None = None) -> list[Run]:
    """Every finished run under ``root``, in sorted path order. A run left out (see the module docstring) is
    reported on one line of stderr and, if ``skipped`` is given, appended to it as (all_results.json, reason)."""
    def skip(path: Path, reason: str) -> None:
        print(f"summarize: skipping {_shown(path)}: {reason}", file=sys.stderr)
        if skipped is not None:
            skipped.append((path, reason))

    runs: list[Run] = []
    seen: dict[tuple[str, str, str, str], Path] = {}
    for path in sorted(root.rglob("all_results.json")):
        try:
            results = read_json_object(path)
            method, rank, task, seed = identify_run(path.parent, results)
        except ValueError as e:
            skip(path, str(e))
            continue
        keys = [k for k, _ in TASK_METRICS[task]]
        problems = [p for p in (metric_problem(results, k) for k in keys) if p]
        if problems:
            skip(path, "; ".join(problems))
            continue
        if (method, rank, task, seed) in seen:
            skip(path, f"{method} rank {rank} {task} seed {seed} is already read from "
                       f"{_shown(seen[method, rank, task, seed].relative_to(root))}")
            continue
        seen[method, rank, task, seed] = path
        runs.append(Run(method, rank, task, seed, [100.0 * results[k] for k in keys], path.parent, results))
        nan = [k for k in keys if math.isnan(results[k])]
        if nan:
            print(f"summarize: note: {_shown(path)}: {', '.join(nan)} is NaN; its mean over seeds is nan",
                  file=sys.stderr)
    return runs


def family(method: str) -> str:
    """The paper's row a method directory belongs to: ``_clr`` variants and ``full_ivon`` join their base."""
    return "full" if method == "full_ivon" else method.replace("_clr", "")


def group(runs: list[Run], merge: bool = True) -> dict[tuple[str, str], dict[str, Cell]]:
    """(row name, rank) -> task -> Cell. A family whose task cells would mix two directories is not merged."""
    def build(name_of) -> dict[tuple[str, str], dict[str, Cell]]:
        rows: dict[tuple[str, str], dict[str, Cell]] = defaultdict(lambda: defaultdict(Cell))
        for r in runs:
            rows[(name_of(r.method), r.rank)][r.task].runs.append(r)
        return rows

    if not merge:
        return build(lambda m: m)
    merged = build(family)
    clash = {key[0] for key, cells in merged.items()
             if any(len({r.method for r in c.runs}) > 1 for c in cells.values())}
    for name in sorted(clash):
        print(f"summarize: not merging {name}: two of its directories hold the same task", file=sys.stderr)
    return build(lambda m: m if family(m) in clash else family(m))


def _order(key: tuple[str, str]) -> tuple:
    method, rank = key
    base, _, criterion = method.partition("-")
    pos = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return (int(rank) if rank.isdigit() else 0, pos, base, criterion)


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f}±{std:.2f}"


def _avg(cells: dict[str, Cell]) -> tuple[float, list[str]]:
    present = [t for t in TASKS if t in cells]
    return statistics.fmean(cells[t].score() for t in present), present


def _avg_over(present: list[str]) -> str:
    return f"all {len(TASKS)}" if len(present) == len(TASKS) else ", ".join(present)


def _runs_with_nan(rows: dict[tuple[str, str], dict[str, Cell]]) -> list[tuple[Run, list[str]]]:
    """Every run with a NaN metric, and the names of those metrics."""
    return [(r, [k for (k, _), v in zip(TASK_METRICS[r.task], r.values) if math.isnan(v)])
            for cells in rows.values() for c in cells.values() for r in c.runs if any(map(math.isnan, r.values))]


def markdown(rows: dict[tuple[str, str], dict[str, Cell]], merged: bool = True,
             skipped: Sequence[tuple[Path, str]] = (), root: Path | None = None) -> str:
    """The results table: our rows, then the AdaLoRA paper's published rows; then the runs with a NaN metric
    and the skipped runs (path, relative to ``root`` if given, and reason), one line each."""
    head = ["method", "rank", *(TASK_HEADERS[t] for t in TASKS), "Avg", "Avg over"]
    lines = [
        "# GLUE dev results",
        "",
        "Metrics ×100. Ours: mean ± sample standard deviation (ddof=1) over seeds, number of seeds in "
        "brackets; the dev-set metric after the final epoch (MNLI: matched/mismatched, QQP: accuracy/F1, "
        "CoLA: Matthews correlation, STS-B: Pearson, others: accuracy). Avg = mean over tasks as in the "
        "AdaLoRA paper (MNLI = mean(m, mm), QQP = mean(acc, F1)), taken only over the tasks present "
        "(column 'Avg over'). Rows marked *paper* are the AdaLoRA paper's Table 1 (DeBERTaV3-base). "
        "A cell (and its row's Avg) is nan when a seed's metric is NaN, e.g. a correlation of constant "
        "predictions; those runs are listed below the table.",
        "",
        *(["Each row joins a method with its `_clr` variant (CoLA, STS-B, MRPC, RTE with IVON's custom LR "
           "schedule), and `full` with `full_ivon` (STS-B, fully fine-tuned with IVON), as the scripts split "
           "them; `summarize.py --no-merge` shows them apart.", ""] if merged else []),
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for key in sorted(rows, key=_order):
        cells = rows[key]
        row = [key[0], key[1]]
        for t in TASKS:
            c = cells.get(t)
            row.append("" if c is None else
                       " / ".join(_fmt(m, s) for m, s in zip(c.means(), c.stds())) + f" ({c.n})")
        avg, present = _avg(cells)
        row += [f"{avg:.2f}", _avg_over(present)]
        lines.append("| " + " | ".join(row) + " |")
    for name, params, values, avg in PAPER_ROWS:
        row = [f"*paper:* {name} ({params} params)", "–"]
        row += ["/".join(f"{v:.2f}" for v in values[t]) for t in TASKS]
        row += [f"{avg:.2f}", _avg_over(TASKS)]
        lines.append("| " + " | ".join(row) + " |")
    shown = lambda path: _shown(path.relative_to(root) if root else path)  # noqa: E731
    nan_runs = _runs_with_nan(rows)
    if nan_runs:
        lines += ["", "## Runs with a NaN metric", ""]
        lines += [f"- `{shown(r.path)}`: {', '.join(keys)} is NaN" for r, keys in nan_runs]
    if skipped:
        lines += ["", "## Skipped runs", ""]
        lines += [f"- `{shown(path)}`: {reason}" for path, reason in skipped]
    return "\n".join(lines) + "\n"


def csv_rows(rows: dict[tuple[str, str], dict[str, Cell]]) -> list[dict[str, object]]:
    """Long form: one line per (row, task, metric) plus a glue_avg line per row; the paper's rows too."""
    out: list[dict[str, object]] = []
    for key in sorted(rows, key=_order):
        cells = rows[key]
        for t in TASKS:
            c = cells.get(t)
            if c is None:
                continue
            for (metric, _), m, s in zip(TASK_METRICS[t], c.means(), c.stds()):
                out.append(dict(source="ours", method=key[0], rank=key[1], task=t, metric=metric[5:],
                                mean=round(m, 4), std="" if c.n == 1 else round(s, 4), n=c.n,
                                detail=";".join(sorted((r.seed for r in c.runs), key=int))))
        avg, present = _avg(cells)
        out.append(dict(source="ours", method=key[0], rank=key[1], task="avg", metric="glue_avg",
                        mean=round(avg, 4), std="", n=len(present), detail=";".join(present)))
    for name, params, values, avg in PAPER_ROWS:
        for t in TASKS:
            for (metric, _), v in zip(TASK_METRICS[t], values[t]):
                out.append(dict(source="adalora_paper", method=name, rank="", task=t, metric=metric[5:],
                                mean=v, std="", n=5, detail=params))
        out.append(dict(source="adalora_paper", method=name, rank="", task="avg", metric="glue_avg",
                        mean=avg, std="", n=len(TASKS), detail=";".join(TASKS)))
    return out


def main(argv: list[str] | None = None) -> int:
    """Write summary.md and summary.csv into OUTPUT_ROOT and print the markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("output_root", type=Path)
    p.add_argument("--no-merge", action="store_true",
                   help="one row per method directory (do not join _clr variants and full_ivon)")
    a = p.parse_args(argv)
    if not a.output_root.is_dir():
        print(f"summarize: error: {a.output_root} is not a directory", file=sys.stderr)
        return 2
    skipped: list[tuple[Path, str]] = []
    runs = find_runs(a.output_root, skipped)
    if not runs:
        print(f"summarize: error: no finished runs (all_results.json) under {a.output_root}", file=sys.stderr)
        return 1
    rows = group(runs, merge=not a.no_merge)
    text = markdown(rows, merged=not a.no_merge, skipped=skipped, root=a.output_root)
    table = csv_rows(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]))
    w.writeheader()
    w.writerows(table)
    try:
        write_atomic(a.output_root / "summary.md", text)
        write_atomic(a.output_root / "summary.csv", buf.getvalue())
    except OSError as e:
        print(f"summarize: error: cannot write into {a.output_root}: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
