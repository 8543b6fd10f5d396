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

The rule keeps what the paper's run did per *run* rather than per *update*, for T' = T / k updates:

* every step count (warm-up, end of the custom schedule's constant phase, AdaLoRA's tinit and tfinal) is
  divided by k, deltaT becomes max(1, round(deltaT / k));
* IVON rows: every learning rate is multiplied by k, so that the sum of the learning rates over the run, and
  with it the distance the means travel in the unclipped regime, is the paper's; and the Hessian's averaging
  is compressed alike, 1 - beta2' = k (1 - beta2), so that h moves as far from hess_init as in the paper;
* unchanged: ess (the training-set size: it sets the posterior's width, a property of the data, as the IVON
  paper prescribes), hess_init, beta1 (a per-update noise filter), IVON's weight decay, the clip radius (the
  largest step lr * clip grows k-fold with lr, as the distance does), batch size, ranks, alpha, the
  orthogonal-regularisation weight, and the AdamW rows' learning rates (Adam's steps are normalised per
  element and already learn at the short horizon).

Status: this is the rule as derived, not yet a working recipe. Tested at k = 10 on MRPC with MiniLM it does not
leave the majority class, nor do two variants (bench/RESULTS.md, "Short-horizon recipes tried"); use it to
reproduce those runs or as the starting point of the next ones.

    python scripts/short_horizon.py --script vilora_clr --task mrpc --scale 10   # flags of one derived row

Only the standard library is used.
"""
from __future__ import annotations

import argparse
import math
import sys

from sweep import load_table, row_flags

# Training examples per task (GLUE train splits), for the paper's update counts.
TRAIN_SIZE = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "qqp": 363846, "mnli": 392702,
              "qnli": 104743, "rte": 2490}
IVON_BETA2 = 0.99999  # run_glue_no_trainer.py's default, which every paper row uses


def paper_updates(row: dict[str, str]) -> int:
    """Optimizer updates of a paper row: epochs x ceil(train size / batch)."""
    batch = int(row["per_device_train_batch_size"])
    return int(row["num_train_epochs"]) * math.ceil(TRAIN_SIZE[row["task_name"]] / batch)


def _other(row: dict[str, str]) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in row.get("other", "").split())


def is_ivon(row: dict[str, str]) -> bool:
    return row.get("use_ivon") == "1" or row.get("lora_type") == "vilora"


def _scaled_lr(value: str, k: float) -> str:
    return f"{float(value) * k:.6g}"


def scale_row(row: dict[str, str], k: float) -> dict[str, str]:
    """The row run k times shorter (k >= 1) by the rule of the module docstring; step counts in ``other``."""
    if k < 1:
        raise ValueError(f"the scale k must be >= 1 (a shorter run), got {k}")
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
        for col in ("learning_rate", "lr_schedule_first_lr", "lr_schedule_second_lr"):
            if row.get(col):
                out[col] = _scaled_lr(row[col], k)
        beta2 = float(other.get("ivon_beta2", IVON_BETA2))
        other["ivon_beta2"] = f"{1 - k * (1 - beta2):.10g}"
    out["other"] = " ".join(f"{n}={v}" for n, v in other.items())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Flags of a paper row compressed k times by the short-horizon rule.")
    p.add_argument("--script", required=True, help="the row's script, e.g. vilora_clr")
    p.add_argument("--task", required=True)
    p.add_argument("--rank", default="2")
    p.add_argument("--scale", type=float, required=True, help="k: the run has 1/k of the paper's updates")
    a = p.parse_args(argv)
    rows = [r for r in load_table() if (r["script"], r["task_name"], r["rank"]) == (a.script, a.task, a.rank)]
    if not rows:
        print(f"short_horizon: error: no row {a.script}/{a.task}/rank {a.rank} in the table", file=sys.stderr)
        return 2
    try:
        row = scale_row(rows[0], a.scale)
    except ValueError as e:
        print(f"short_horizon: error: {e}", file=sys.stderr)
        return 2
    print(" ".join(row_flags(row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
