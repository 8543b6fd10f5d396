"""Turn rows of ``scripts/hparams.tsv`` into ``run_glue_no_trainer.py`` argument lists (used by launch.sh).

The table holds every hyperparameter of the paper's sweeps, one row per (final rank, task, script).
``plan_runs`` expands the rows a method script asks for into one run per (rank, task, criterion, seed),
each with its output directory::

    OUTPUT_ROOT/<method>[-<criterion>]/rank<R>/<task>/seed<S>/

Run as a program, it prints one run per line: the output directory, then the training arguments, joined
by the ASCII unit separator (0x1f), so that bash reads them into an array without any quoting rules.
Hence no word may hold a newline (it would end the line and split one command into two) or 0x1f: such a
word (a quoted newline in EXTRA_ARGS, a newline in MODEL, GLUE_DIR, OUTPUT_ROOT or an argument) is refused.
A newline between words of a list knob (TASKS, SEEDS, ...) or of EXTRA_ARGS is only whitespace.
Bad knobs fail with one line on stderr and exit status 2. Only the standard library is used.
"""
from __future__ import annotations

import argparse
import csv
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "hparams.tsv"
SEP = "\x1f"

# Table columns that describe the row, or are expanded by the launcher, rather than passed through as flags.
META_COLUMNS = ("rank", "task_name", "script", "model", "seeds", "other")
# store_true flags of run_glue_no_trainer.py that the table spells as `1` (G.1).
BOOL_FLAGS = frozenset({"apply_lora", "use_ivon", "use_custom_lr_schedule", "gradient_checkpointing",
                        "pad_to_max_length", "fp16", "use_slow_tokenizer", "ignore_mismatched_sizes"})
# Posterior importance scores a VILoRA run may use (the registry in peft/importance.py, less "sensitivity",
# which is AdaLoRA's and needs no IVON). Checked here so that a typo fails before any job starts.
VILORA_CRITERIA = ("SNR_mean_abs", "SNR", "mean", "sigma", "E_mean_abs")
# The four criteria compared in the paper; the `_criterion` scripts sweep these unless CRITERIA says otherwise.
PAPER_CRITERIA = ("SNR_mean_abs", "SNR", "mean", "sigma")


class PlanError(ValueError):
    """A knob names something the table does not have; the message says what would be valid."""


@dataclass(frozen=True)
class Run:
    """One training run: where it writes, and the arguments after ``run_glue_no_trainer.py``."""

    output_dir: Path
    args: tuple[str, ...]
    criterion: str | None = None  # set for the runs of a criterion sweep


def load_table(path: Path = TABLE) -> list[dict[str, str]]:
    """Rows of a hyperparameter table (tab-separated, header line first) as column -> string value."""
    with open(path, newline="") as f:
        return [dict(row) for row in csv.DictReader(f, delimiter="\t")]


def _flag(name: str, value: str) -> list[str]:
    """``--name value``, or a bare ``--name`` for a store_true flag set to 1 (nothing when set to 0)."""
    if name in BOOL_FLAGS:
        if value not in ("0", "1"):
            raise PlanError(f"hparams.tsv: {name}={value!r} is a switch; use 1 or 0")
        return [f"--{name}"] if value == "1" else []
    return [f"--{name}", value]


def row_flags(row: dict[str, str]) -> list[str]:
    """The training flags a table row sets: every non-empty hyperparameter column, then ``other``.

    Values are passed verbatim (``8e-4`` stays ``8e-4``) so a command can be compared with its row as text.
    ``other`` holds space-separated ``name=value`` items for flags that only a few rows set.
    """
    flags: list[str] = []
    for name, value in row.items():
        if name in META_COLUMNS or not value:
            continue
        flags += _flag(name, value)
    for item in row.get("other", "").split():
        name, eq, value = item.partition("=")
        if not eq:
            raise PlanError(f"hparams.tsv: 'other' item {item!r} is not name=value")
        flags += _flag(name, value)
    return flags


def _words(text: str) -> list[str]:
    """Split a knob given as a space- or comma-separated list (repeats dropped, order kept)."""
    return list(dict.fromkeys(text.replace(",", " ").split()))


def plan_runs(methods: list[str], ranks: list[str], tasks: list[str], seeds: list[str],
              criteria: list[str], output_root: Path, model: str = "", glue_dir: str = "",
              extra_args: Sequence[str] = (), table: list[dict[str, str]] | None = None) -> list[Run]:
    """Expand table rows into runs, ordered rank -> task -> method -> criterion -> seed.

    methods: values of the table's ``script`` column; a task gets a run from every listed method that has a
        row for it (``full`` + ``full_ivon`` covers all 8 tasks, since STS-B is fine-tuned with IVON).
    tasks: empty means every task that one of ``methods`` has at that rank.
    seeds: empty means the row's ``seeds`` column (2021-2025 everywhere).
    criteria: replaces the ``vilora_criterion`` of rows that set one (the ``*_criterion`` scripts); such runs
        get a ``-<criterion>`` suffix on the method directory. Empty means the paper's four criteria.
    model: replaces the table's model when non-empty. glue_dir: passed as ``--glue_dir`` when non-empty.
    extra_args: appended to every command, so they override table values (argparse keeps the last one).
    """
    table = load_table() if table is None else table
    known_methods = sorted({r["script"] for r in table})
    for m in methods:
        if m not in known_methods:
            raise PlanError(f"unknown method {m!r}; hparams.tsv has {', '.join(known_methods)}")
    for c in criteria:
        if c not in VILORA_CRITERIA:
            raise PlanError(f"unknown criterion {c!r}; valid: {' '.join(VILORA_CRITERIA)}")
    for s in seeds:
        if not s.isdigit():
            raise PlanError(f"seed {s!r} is not a non-negative integer")
    criteria = list(criteria) or list(PAPER_CRITERIA)

    runs: list[Run] = []
    for rank in ranks:
        rows = [r for r in table if r["rank"] == rank and r["script"] in methods]
        if not rows:
            have = sorted({r["rank"] for r in table if r["script"] in methods})
            raise PlanError(f"{'/'.join(methods)} has no rank-{rank} rows in hparams.tsv; ranks there: "
                            f"{' '.join(have)}")
        available = list(dict.fromkeys(r["task_name"] for r in rows))
        for task in tasks or available:
            task_rows = [r for r in rows if r["task_name"] == task]
            if not task_rows:
                raise PlanError(f"{'/'.join(methods)} has no rank-{rank} row for task {task!r}; "
                                f"tasks there: {' '.join(available)}")
            for row in sorted(task_rows, key=lambda r: methods.index(r["script"])):
                runs += _row_runs(row, seeds, criteria, output_root, model, glue_dir, list(extra_args))
    return runs


def _row_runs(row: dict[str, str], seeds: list[str], criteria: list[str], output_root: Path,
              model: str, glue_dir: str, extra_args: list[str]) -> list[Run]:
    """The runs of one table row: one per seed, times one per criterion for criterion-sweep rows."""
    runs = []
    sweeps_criterion = bool(row["vilora_criterion"])
    for criterion in criteria if sweeps_criterion else [None]:
        r = dict(row, vilora_criterion=criterion) if criterion else row
        method_dir = f"{row['script']}-{criterion}" if criterion else row["script"]
        for seed in seeds or _words(row["seeds"]):
            out = output_root / method_dir / f"rank{row['rank']}" / row["task_name"] / f"seed{seed}"
            args = ["--task_name", row["task_name"], "--model_name_or_path", model or row["model"],
                    *row_flags(r), "--seed", seed, "--output_dir", str(out)]
            if glue_dir:
                args += ["--glue_dir", glue_dir]
            args += extra_args
            runs.append(Run(out, tuple(args), criterion))
    return runs


def plan_line(run: Run) -> str:
    """One run as launch.sh reads it: output directory and arguments joined by SEP, on one line.

    PlanError if a word holds a newline (bash would read the rest as another command) or SEP (it would split
    the word in two).
    """
    words = (str(run.output_dir), *run.args)
    for w in words:
        if "\n" in w or SEP in w:
            raise PlanError(f"{w!r} holds a newline or 0x1f, but each command is one line; a newline may only "
                            "separate words (of TASKS, SEEDS, CRITERIA, RANK, EXTRA_ARGS)")
    return SEP.join(words)


def main(argv: list[str] | None = None) -> int:
    """Print the runs of a sweep, one per line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", required=True, help="comma list of values of the table's script column")
    p.add_argument("--rank", default="2", help="final average rank: 2, 4, or both ('2 4')")
    p.add_argument("--tasks", default="", help="space/comma list; empty: the methods' tasks in the table")
    p.add_argument("--seeds", default="", help="space/comma list; empty: the table's seeds")
    p.add_argument("--criteria", default="", help="criteria of *_criterion rows; empty: the paper's four")
    p.add_argument("--model", default="")
    p.add_argument("--glue_dir", default="")
    p.add_argument("--output_root", required=True)
    p.add_argument("--extra_args", default="", help="one string, split like a shell command line")
    p.add_argument("--table", default=str(TABLE))
    p.add_argument("trailing", nargs="*", help="after --: more arguments appended to every command")
    a = p.parse_args(argv)
    try:
        for r in _words(a.rank):
            if r not in ("2", "4"):
                raise PlanError(f"RANK must be 2 or 4 (the paper's final average ranks), got {r!r}")
        runs = plan_runs(
            methods=_words(a.methods), ranks=_words(a.rank), tasks=_words(a.tasks), seeds=_words(a.seeds),
            criteria=_words(a.criteria), output_root=Path(a.output_root), model=a.model,
            glue_dir=a.glue_dir, extra_args=shlex.split(a.extra_args) + a.trailing,
            table=load_table(Path(a.table)))
        lines = [plan_line(r) for r in runs]
    except (ValueError, OSError) as e:  # PlanError, or unbalanced quotes in EXTRA_ARGS
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2
    if a.criteria and not any(r.criterion for r in runs):
        print(f"sweep: note: CRITERIA is ignored: {a.methods} rows set no criterion "
              "(the *_criterion scripts sweep criteria)", file=sys.stderr)
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
