"""The short-horizon rule: a row of the paper's table compressed to k times fewer updates.

The paper's IVON recipe (lr 2.0 then 0.5 on the custom schedule, hess_init 1, beta2 = 0.99999, clip radius
1e-3, ess = training-set size) is tuned for its own horizon, thousands of updates. Read from the IVON
statistics the training script logs (bench/RESULTS.md has the runs), at that horizon IVON behaves as follows:
the Hessian moves from hess_init by (1 - beta2) per update, i.e. by 3% over the whole run, so the step
lr * m / (h + delta) is plain momentum SGD with the scheduled lr; the clip radius cuts the step of only about
1% of the elements; and sigma = 1 / sqrt(ess * (h + delta)) stays at its starting value, as large as the
adapters' initial weights, so how far the means travel over the run decides the signal-to-noise ratio the
posterior scores read. Running the same schedule k times shorter moves the means about k times less and
leaves them inside the noise (the posterior methods then never leave the majority class).

The rule (v2) keeps the part of the paper's run in which, by those statistics, the IVON runs learn, for
T' = T / k updates:

* every step count (warm-up, end of the custom schedule's constant phase, AdaLoRA's tinit and tfinal) is
  divided by k, deltaT becomes max(1, round(deltaT / k));
* IVON rows (the paper's custom `_clr` schedule: warm-up to first_lr, constant, then second_lr decaying
  linearly to 0): second_lr becomes k x second_lr, so that the decaying phase, now k times shorter, keeps
  its learning-rate integral (the sum of the lr over its updates, which sets how far the means travel while
  h stays at hess_init); first_lr is unchanged, and it bounds the new second_lr: k may be at most
  first_lr / second_lr (4 for the MRPC and RTE rows, 5 for STS-B and CoLA), so no update takes a larger lr than the
  paper's own largest;
* unchanged: ess (the training-set size, as the IVON paper prescribes), hess_init, beta1, beta2 (the Hessian
  stays within 3% of hess_init over the paper's whole run, closer still over a shorter one), IVON's weight
  decay, the clip radius, batch size, ranks, alpha, the orthogonal-regularisation weight, and the AdamW rows'
  learning rates.

Status: tested at k = 4 with MiniLM, seed 2021 (bench/RESULTS.md): VILoRA ends at 78.7% accuracy / 85.7 F1 on
MRPC (862 updates; the paper's schedule at full length on the same model: 80.1%, and 79.9% at update 900,
where it has spent about the lr integral a k = 4 run spends in all) and at 86.0 Pearson on STS-B (1,125
updates). bench/cpu_glue.sh and `make demo` run rows derived by this rule.

Why not the first rule tried (v1: every IVON lr x k, 1 - beta2 x k): at k = 10 the lr of 20 made the training
loss rise, and it and two variants stayed at the majority class (bench/RESULTS.md, "Short-horizon recipes
tried"). Step counts alone (lr unchanged) learn too little: 70.6% after 690 updates (k = 5) and 71.x% after
1,150 (k = 3) on MRPC, where the paper's run is at 76-80% by then, having spent a 3-4 times larger lr
integral.

    python scripts/short_horizon.py --script vilora_clr --task mrpc --scale 4        # flags of one derived row
    python scripts/short_horizon.py --scale 4 --table out.tsv --task mrpc stsb       # a table for launch.sh

Printing a row needs only the standard library; --table writes with the training script's atomic writer
(glue_run.files).
"""
from __future__ import annotations

import argparse
import math
import sys

from sweep import load_table, row_flags

# Training examples per task (GLUE train splits), for the paper's update counts.
TRAIN_SIZE = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "qqp": 363846, "mnli": 392702,
              "qnli": 104743, "rte": 2490}


def paper_updates(row: dict[str, str]) -> int:
    """Optimizer updates of a paper row: epochs x ceil(train size / batch)."""
    batch = int(row["per_device_train_batch_size"])
    return int(row["num_train_epochs"]) * math.ceil(TRAIN_SIZE[row["task_name"]] / batch)


def _other(row: dict[str, str]) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in row.get("other", "").split())


def is_ivon(row: dict[str, str]) -> bool:
    return row.get("use_ivon") == "1" or row.get("lora_type") == "vilora"


def max_scale(row: dict[str, str]) -> float:
    """The largest k the rule allows for a row: first_lr / second_lr for the custom schedule, else no limit."""
    if row.get("use_custom_lr_schedule") == "1" and row.get("lr_schedule_second_lr"):
        return float(row["lr_schedule_first_lr"]) / float(row["lr_schedule_second_lr"])
    return math.inf


def scale_row(row: dict[str, str], k: float) -> dict[str, str]:
    """The row run k times shorter (1 <= k <= max_scale) by the rule of the module docstring."""
    if k < 1:
        raise ValueError(f"the scale k must be >= 1 (a shorter run), got {k}")
    if is_ivon(row) and row.get("use_custom_lr_schedule") != "1":
        raise ValueError(f"the rule is defined for the custom-schedule IVON rows (*_clr); {row['script']} has none")
    if k > max_scale(row):
        raise ValueError(f"k = {k:g} is beyond the rule's range for {row['script']}/{row['task_name']}: k x "
                         f"second_lr must stay <= first_lr, so k <= {max_scale(row):g}")
    out, other = dict(row), _other(row)
    total = paper_updates(row)
    other["max_train_steps"] = str(max(1, round(total / k)))
    out["num_warmup_steps"] = str(round(int(row["num_warmup_steps"]) / k))
    if row.get("adalora_tinit"):
        out["adalora_tinit"] = str(round(int(row["adalora_tinit"]) / k))
        out["adalora_tfinal"] = str(round(int(row["adalora_tfinal"]) / k))
        out["adalora_delta_t"] = str(max(1, round(int(row["adalora_delta_t"]) / k)))
    if row.get("lr_schedule_const_epochs"):
        const = float(row["lr_schedule_const_epochs"])
        per_epoch = math.ceil(TRAIN_SIZE[row["task_name"]] / int(row["per_device_train_batch_size"]))
        steps = const if const > 100 else const * per_epoch  # above 100 the paper's value is a step count
        out["lr_schedule_const_epochs"] = ""
        other["lr_schedule_const_steps"] = str(round(steps / k))
    if is_ivon(row):
        out["lr_schedule_second_lr"] = f"{float(row['lr_schedule_second_lr']) * k:.6g}"
    out["other"] = " ".join(f"{n}={v}" for n, v in other.items())
    return out


def write_table(rows: list[dict[str, str]], path: str) -> None:
    """The scaled rows as a table in scripts/hparams.tsv's format (for launch.sh's HPARAMS), written atomically."""
    import csv
    import io
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from glue_run.files import write_atomic  # the training script's one atomic writer

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(Path(path), buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Paper rows compressed k times by the short-horizon rule: the flags of "
                                "one row, or (--table) a table of rows for scripts/launch.sh's HPARAMS.")
    p.add_argument("--script", nargs="+", default=["vilora_clr"], help="the rows' scripts, e.g. vilora_clr adalora")
    p.add_argument("--task", nargs="+", default=["mrpc"], help="the rows' tasks")
    p.add_argument("--rank", default="2", help="final average rank of the rows (2 or 4)")
    p.add_argument("--scale", type=float, required=True, help="k: the run has 1/k of the paper's updates")
    p.add_argument("--eval_steps", type=int, help="evaluate every N updates (default: the row's own interval; "
                   "evaluation does not change training)")
    p.add_argument("--table", help="write every selected row to this .tsv instead of printing one row's flags")
    a = p.parse_args(argv)
    wanted = {(s, t) for s in a.script for t in a.task}
    rows = [r for r in load_table() if (r["script"], r["task_name"]) in wanted and r["rank"] == a.rank]
    missing = sorted(wanted - {(r["script"], r["task_name"]) for r in rows})
    if missing:
        print(f"short_horizon: error: no row {missing[0][0]}/{missing[0][1]}/rank {a.rank} in the table",
              file=sys.stderr)
        return 2
    if a.table is None and len(rows) != 1:
        print("short_horizon: error: flags are printed for one row; give one --script and one --task, or --table",
              file=sys.stderr)
        return 2
    try:
        scaled = [scale_row(r, a.scale) | ({"eval_steps": str(a.eval_steps)} if a.eval_steps else {}) for r in rows]
    except ValueError as e:
        print(f"short_horizon: error: {e}", file=sys.stderr)
        return 2
    if a.table is None:
        print(" ".join(row_flags(scaled[0])))
    else:
        write_table(scaled, a.table)
        print(f"wrote {len(scaled)} rows to {a.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
