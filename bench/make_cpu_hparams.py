"""Derive bench/cpu_hparams.tsv (the reduced CPU grid of bench/cpu_glue.sh) from scripts/hparams.tsv.

The paper's schedules are kept in shape and scaled in time: every step count of a row (warm-up, AdaLoRA's
tinit and tfinal, the custom schedule's end of the constant phase) is multiplied by ``STEPS / T``, where T is
the paper's number of updates for that task (epochs x ceil(train size / 32)) and STEPS the CPU run length.
Learning rates, ranks, alpha, the orthogonal-regularisation weight and IVON's settings stay the paper's.
deltaT becomes max(1, round(deltaT x STEPS / T)), i.e. 1; max_length is capped at 128; the batch is BATCH.
Every adapter method targets MiniLM's query, key, value and dense matrices (37 with the pooler), as the
paper's DeBERTa runs adapt all of them.

    python bench/make_cpu_hparams.py        # rewrites bench/cpu_hparams.tsv
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
from sweep import load_table  # noqa: E402

STEPS = 120  # optimizer updates per CPU run
BATCH = 16  # half the paper's 32: twice the updates for the same compute
MAX_LENGTH = 128
TASKS = ("rte", "mrpc", "stsb", "cola")
METHODS = ("lora_all", "adalora", "adalora_ivon_clr", "vilora_clr", "vilora_clr_criterion")
TRAIN_SIZE = {"rte": 2490, "mrpc": 3668, "stsb": 5749, "cola": 8551}
PAPER_BATCH = 32
MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # bench/cpu_glue.sh passes the local copy as MODEL
TARGETS = "query,key,value,dense"


def scale_row(row: dict[str, str]) -> dict[str, str]:
    """The CPU version of one paper row (see the module docstring)."""
    task = row["task_name"]
    paper_total = int(row["num_train_epochs"]) * math.ceil(TRAIN_SIZE[task] / PAPER_BATCH)
    f = STEPS / paper_total
    out = dict(row)
    out["model"] = MODEL
    if "apply_lora=1" in row["other"].split():
        out["lora_modules"] = TARGETS  # BERT names; AdaLoRA too, so all methods adapt the same 37 matrices
    out["max_length"] = str(min(int(row["max_length"]), MAX_LENGTH))
    out["per_device_train_batch_size"] = str(BATCH)
    out["num_warmup_steps"] = str(max(1, round(int(row["num_warmup_steps"]) * f)))
    if row["adalora_tinit"]:
        out["adalora_tinit"] = str(round(int(row["adalora_tinit"]) * f))
        out["adalora_tfinal"] = str(round(int(row["adalora_tfinal"]) * f))
        out["adalora_delta_t"] = str(max(1, round(int(row["adalora_delta_t"]) * f)))
    if row["lr_schedule_const_epochs"]:
        const = float(row["lr_schedule_const_epochs"])
        const_steps = const if const > 100 else const * math.ceil(TRAIN_SIZE[task] / PAPER_BATCH)
        steps_per_epoch = math.ceil(TRAIN_SIZE[task] / BATCH)
        # In epochs: a scaled step count would be below 100 and so be read as epochs by the script.
        out["lr_schedule_const_epochs"] = f"{round(const_steps * f) / steps_per_epoch:.4f}"
    out["other"] = " ".join(filter(None, [row["other"], f"max_train_steps={STEPS}"]))
    return out


def main() -> int:
    rows = [r for r in load_table() if r["rank"] == "2" and r["task_name"] in TASKS and r["script"] in METHODS]
    out = HERE / "cpu_hparams.tsv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow(scale_row(row))
    print(f"wrote {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
