"""The CPU grid's tables for bench/RESULTS.md, from the committed small results of its finished runs.

    python bench/grid_report.py bench/results/cpu_glue_k4 [--peer bench/results/cpu_glue_k4_peer]
                                [--glue_dir ../shared/glue]

Prints markdown: (1) every method on every task, mean ± sample std over seeds with the seed count, beside the
majority-class score (read from the dev sets when --glue_dir is given); (2) the comparisons the paper's claims rest
on, each paired by seed (the same seed gives both runs the same data order and initialisation): VILoRA's SNR(|θ|)
against AdaLoRA's sensitivity with the same IVON and schedule, and the magnitude score |μ| against the variance
score 1/σ; (3) train time per run, and VILoRA's over AdaLoRA's paired by seed (a pair whose runs record
different machines in run_config.json is marked and left out of the mean); (4) how often two adaptive runs of
the same seed end with the same kept/pruned decision for a triplet (their rank_pattern.json); (5) with --peer,
Hugging Face PEFT's LoRA and AdaLoRA beside ours, seed by seed. Runs are found and read by scripts/summarize.py
(the same rules and metrics: RTE and MRPC accuracy, STS-B Pearson, CoLA Matthews correlation). Nothing is written.
A folder that is missing or holds no finished rank-2 run is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))
from summarize import TASK_HEADERS, Run, find_runs, metric_problem  # noqa: E402

TASKS = ["rte", "mrpc", "stsb", "cola"]
TASK_NAMES = {"rte": "RTE", "mrpc": "MRPC", "stsb": "STS-B", "cola": "CoLA"}
METHODS = [("lora_all", "LoRA + AdamW"), ("adalora", "AdaLoRA + AdamW (sensitivity)"),
           ("adalora_ivon_clr", "AdaLoRA + IVON (sensitivity)"), ("vilora_clr", "VILoRA, SNR(|θ|)"),
           ("vilora_clr_criterion-SNR", "VILoRA, |μ|/σ"), ("vilora_clr_criterion-mean", "VILoRA, |μ|"),
           ("vilora_clr_criterion-sigma", "VILoRA, 1/σ")]
# (first, second, what a positive difference means)
PAIRS = [("vilora_clr", "adalora_ivon_clr", "posterior SNR(|θ|) − sensitivity, both IVON"),
         ("vilora_clr_criterion-mean", "vilora_clr_criterion-sigma", "magnitude |μ| − variance 1/σ"),
         ("vilora_clr", "vilora_clr_criterion-SNR", "SNR(|θ|) − |μ|/σ"),
         ("vilora_clr_criterion-SNR", "vilora_clr_criterion-mean", "|μ|/σ − |μ|"),
         ("vilora_clr", "adalora", "VILoRA − AdaLoRA + AdamW (schedules differ, see text)")]
# (first, second, what) whose train times are compared seed by seed: the paper's "faster alternative" claim
TIME_PAIRS = [("vilora_clr", "adalora", "VILoRA / AdaLoRA + AdamW"),
              ("vilora_clr", "adalora_ivon_clr", "VILoRA / AdaLoRA + IVON")]
# pairs of adaptive runs whose final rank patterns are compared, triplet by triplet
RANK_PAIRS = [("vilora_clr", "adalora_ivon_clr"), ("adalora", "adalora_ivon_clr"),
              ("vilora_clr_criterion-mean", "vilora_clr_criterion-sigma"), ("vilora_clr", "vilora_clr_criterion-mean"),
              ("vilora_clr", "vilora_clr_criterion-SNR"), ("vilora_clr", "vilora_clr_criterion-sigma"),
              ("vilora_clr_criterion-SNR", "vilora_clr_criterion-mean")]


TRAINING_CODE = ["run_glue_no_trainer.py", "glue_run", "peft", "ivon", "metrics"]


def _fmt(values: list[float]) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f} (1)"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f} ({len(values)})"


def _cell(text: str) -> str:
    """Text for a markdown table cell: a bare | (as in |μ|) would end the cell."""
    return text.replace("|", "\\|")


def by_cell(runs: list[Run]) -> dict[tuple[str, str], dict[str, Run]]:
    """(method, task) -> seed -> run, rank 2 (the grid's only rank)."""
    cells: dict[tuple[str, str], dict[str, Run]] = {}
    for r in runs:
        if r.rank == "2":
            cells.setdefault((r.method, r.task), {})[r.seed] = r
    return cells


def majority(task: str, glue_dir: Path) -> str:
    """The dev metric of always predicting the most common label (STS-B: a constant has no correlation)."""
    from glue_run.data import majority_baseline

    if task in ("stsb", "cola"):
        return "0 (constant)"
    return f"{100 * majority_baseline(task, glue_dir)['accuracy']:.2f}"


def runtime_min(run: Run) -> float | None:
    """Its training time in minutes; None when its all_results.json records none (a number is needed)."""
    if metric_problem(run.results, "train_runtime_s") is not None:  # summarize's rule for a number in the file
        return None
    seconds = run.results["train_runtime_s"]
    return seconds / 60 if math.isfinite(seconds) else None


def _mean_minutes(runs: list[Run]) -> str:
    minutes = [m for r in runs if (m := runtime_min(r)) is not None]
    return f"{statistics.fmean(minutes):.0f}" if minutes else ""


def paired(cells: dict[tuple[str, str], dict[str, Run]], a: str, b: str, task: str) -> list[tuple[Run, Run]]:
    """The runs of methods `a` and `b` on `task` with the same seed, in seed order."""
    first, second = cells.get((a, task), {}), cells.get((b, task), {})
    return [(first[s], second[s]) for s in sorted(set(first) & set(second), key=int)]


def same_decisions(a: Run, b: Run) -> tuple[int, int, float] | None:
    """(triplets kept or pruned alike, triplets, how many two random patterns keeping as many as each would
    share on average) between two runs' final rank patterns (rank_pattern.json); None when either has none or
    they mask different matrices."""
    try:
        pa, pb = (json.loads((r.path / "rank_pattern.json").read_text()) for r in (a, b))
    except (OSError, json.JSONDecodeError):
        return None
    if pa.keys() != pb.keys() or any(len(pa[k]) != len(pb[k]) for k in pa):
        return None
    n = sum(len(v) for v in pa.values())
    ka, kb = (sum(sum(map(bool, v)) for v in pattern.values()) for pattern in (pa, pb))
    chance = (ka * kb + (n - ka) * (n - kb)) / n
    return sum(x == y for k in pa for x, y in zip(pa[k], pb[k])), n, chance


def run_config(run: Run) -> dict:
    """The run's run_config.json; {} when it has none or it is not a JSON object."""
    try:
        config = json.loads((run.path / "run_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def provenance(run: Run) -> tuple[str, str]:
    """(commit, start time) from the run's run_config.json; empty strings where it records none."""
    config = run_config(run)
    commit, start = config.get("git_commit"), config.get("start_time")
    return (commit if isinstance(commit, str) else ""), (start if isinstance(start, str) else "")


def same_machine(a: Run, b: Run) -> bool | None:
    """Whether two runs were timed on the same machine (the boot id their run_config.json records); None when
    either does not say."""
    ids = []
    for run in (a, b):
        machine = run_config(run).get("machine")
        ids.append(machine.get("boot_id") if isinstance(machine, dict) else None)
    return None if None in ids else ids[0] == ids[1]


def training_code(commit: str) -> str | None:
    """git's listing of the training code's files at ``commit`` (equal listings: the same code); None when git is
    missing or does not know the commit."""
    if not commit:
        return None
    try:
        done = subprocess.run(["git", "-C", str(REPO), "ls-tree", commit, "--", *TRAINING_CODE],
                              capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout or None


def provenance_table(cells: dict[tuple[str, str], dict[str, Run]]) -> list[str]:
    """Markdown rows: one per commit the runs started from, oldest first, with the runs grouped by method and a
    letter per distinct training code (A for the first)."""
    groups: dict[str, list[tuple[str, Run]]] = {}
    for runs in cells.values():
        for run in runs.values():
            commit, start = provenance(run)
            groups.setdefault(commit, []).append((start, run))
    letters: dict[str, str] = {}
    rows = []
    for commit, runs in sorted(groups.items(), key=lambda kv: min(s for s, _ in kv[1])):
        code = training_code(commit)
        if code is None:
            letter = "?"
        else:
            letter = letters.setdefault(code, chr(ord("A") + len(letters)))
        by_method: dict[str, list[str]] = {}
        for _, r in sorted(runs, key=lambda sr: (TASKS.index(sr[1].task) if sr[1].task in TASKS else 99,
                                                 int(sr[1].seed))):
            by_method.setdefault(r.method, []).append(f"{TASK_NAMES.get(r.task, r.task)} {r.seed}")
        order = [m for m, _ in METHODS if m in by_method] + sorted(set(by_method) - {m for m, _ in METHODS})
        what = "; ".join(f"`{m}` " + ", ".join(by_method[m]) for m in order)
        started = min(s for s, _ in runs).replace("T", " ")[:16]
        rows.append(f"| {commit[:7] or 'not recorded'} | {started} | {letter} | {what} |")
    return rows


def _grid(root: Path) -> dict[tuple[str, str], dict[str, Run]]:
    """`by_cell` of the finished runs under ``root``; ValueError when there are none at rank 2."""
    cells = by_cell(find_runs(root))
    if not cells:
        raise ValueError(f"no finished rank-2 runs (all_results.json) under {root}")
    return cells


def report(root: Path, peer: Path | None, glue_dir: Path | None) -> str:
    """The markdown of the module docstring; ValueError when ``root`` (or ``peer``) holds no finished run."""
    cells = _grid(root)
    out = ["| method | " + " | ".join(TASK_HEADERS[t] for t in TASKS) + " |", "|---" * (len(TASKS) + 1) + "|"]
    for method, label in METHODS:
        row = [_fmt([r.values[0] for r in cells.get((method, t), {}).values()]) for t in TASKS]
        if any(row):
            out.append(f"| {_cell(label)} (`{method}`) | " + " | ".join(row) + " |")
    if glue_dir is not None:
        out.append("| majority class | " + " | ".join(majority(t, glue_dir) for t in TASKS) + " |")

    out += ["", "Paired by seed (difference of the dev metric, mean ± std over seeds; wins = seeds where the first is "
            "higher):",
            "", "| comparison | task | difference | wins / seeds |", "|---|---|---|---|"]
    for a, b, what in PAIRS:
        for t in TASKS:
            d = [x.values[0] - y.values[0] for x, y in paired(cells, a, b, t)]
            if d:
                wins = sum(v > 0 for v in d)
                out.append(f"| {_cell(what)} | {TASK_HEADERS[t]} | {_fmt(d)} | {wins} / {len(d)} |")

    out += ["", ("Train time per run (minutes, mean over seeds; 1-thread processes sharing 2 cores with other work, on "
                  "the machine of the session that ran them):"),
            "", "| method | " + " | ".join(TASK_HEADERS[t] for t in TASKS) + " |", "|---" * (len(TASKS) + 1) + "|"]
    for method, label in METHODS:
        row = [cells.get((method, t), {}) for t in TASKS]
        if any(row):
            out.append(f"| `{method}` | " + " | ".join(_mean_minutes(list(c.values())) for c in row) + " |")
    rows = []
    for a, b, what in TIME_PAIRS:
        for t in TASKS:
            ratios = [(x_min / y_min, same_machine(x, y)) for x, y in paired(cells, a, b, t)
                      if (x_min := runtime_min(x)) is not None and (y_min := runtime_min(y))]
            if ratios:
                kept = [v for v, same in ratios if same is not False]
                per_seed = ", ".join(f"{v:.3f}" + ("" if same is not False else "†") for v, same in ratios)
                mean = f"{statistics.fmean(kept):.3f}" if kept else ""
                rows.append(f"| {what} | {TASK_HEADERS[t]} | {per_seed} | {mean} |")
    if rows:
        out += ["", "Train time ratio, paired by seed (per seed, in seed order, and their mean; † the two runs record "
                "different machines and stay out of the mean):", "",
                "| ratio | task | per seed | mean |", "|---|---|---|---|", *rows]

    rows = []
    for a, b in RANK_PAIRS:
        for t in TASKS:
            counts = [c for x, y in paired(cells, a, b, t) if (c := same_decisions(x, y)) is not None]
            if counts:
                rows.append(f"| `{a}` | `{b}` | {TASK_HEADERS[t]} | {', '.join(str(c[0]) for c in counts)} "
                            f"of {counts[0][1]} | {', '.join(f'{c[2]:.1f}' for c in counts)} |")
    if rows:
        out += ["", "Final rank patterns, paired by seed: triplets that both runs keep or both prune (per seed, in "
                "seed order), and how many two random patterns with the same kept counts share on average:", "",
                "| run | against | task | same decision | by chance |", "|---|---|---|---|---|", *rows]

    out += ["", "Where the runs came from: the commit each started from, the first start (UTC), and its training code "
            "(runs with the same letter trained with the same files):", "",
            "| commit | started | code | runs (task, seed) |", "|---|---|---|---|", *provenance_table(cells)]

    if peer is not None:
        theirs = _grid(peer)
        out += ["", "Hugging Face PEFT (`bench/cpu_glue_peer.sh`) beside ours, same commands:", "",
                "| method | task | seed | ours | Hugging Face PEFT |", "|---|---|---|---|---|"]
        for (method, t), runs in sorted(theirs.items()):
            for s in sorted(runs, key=int):
                mine = cells.get((method, t), {}).get(s)
                ours = f"{mine.values[0]:.2f}" if mine else "not run"
                out.append(f"| `{method}` | {TASK_HEADERS[t]} | {s} | {ours} | {runs[s].values[0]:.2f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="results of the grid (bench/results/cpu_glue_k4 or an output root)")
    p.add_argument("--peer", type=Path, help="results of bench/cpu_glue_peer.sh")
    p.add_argument("--glue_dir", type=Path, help="local GLUE copy, for the majority-class row")
    args = p.parse_args(argv)
    for name, path in (("root", args.root), ("--peer", args.peer), ("--glue_dir", args.glue_dir)):
        if path is not None and not path.is_dir():
            print(f"grid_report: {name} {path} is not a folder", file=sys.stderr)
            return 2
    try:
        text = report(args.root, args.peer, args.glue_dir)
    except ValueError as e:
        print(f"grid_report: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
