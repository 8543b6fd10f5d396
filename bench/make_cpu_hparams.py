"""Derive bench/cpu_hparams.tsv (the CPU grid of bench/cpu_glue.sh) from scripts/hparams.tsv.

Every row is the paper's, run K = 4 times shorter by the short-horizon rule of scripts/short_horizon.py (step
counts / K; the IVON rows' decaying-phase lr x K, within the paper's peak lr), with three changes for the
model: the pretrained MiniLM (a BERT: bench/cpu_glue.sh passes the local copy as MODEL), LoRA's DeBERTa
target names mapped to BERT's (query, key, value and every dense matrix, as the paper's lora_all adapts all
of them), and a dev evaluation every EVAL_STEPS updates for the learning curves. AdaLoRA and VILoRA rows keep
the paper's targets, i.e. the library default for the model (query and value for BERT), as in the paper-horizon
runs of bench/RESULTS.md. Batch 32, max_length, ranks, alpha, the orthogonal weight and IVON's settings are
the paper's.

    python bench/make_cpu_hparams.py        # rewrites bench/cpu_hparams.tsv
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
from short_horizon import scale_row, write_table  # noqa: E402
from sweep import load_table  # noqa: E402

K = 4  # the rule's largest scale for the MRPC/RTE rows (first_lr / second_lr = 2.0 / 0.5)
EVAL_STEPS = 100
TASKS = ("rte", "mrpc", "stsb", "cola")
METHODS = ("lora_all", "adalora", "adalora_ivon_clr", "vilora_clr", "vilora_clr_criterion")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BERT_NAMES = {"query_proj": "query", "key_proj": "key", "value_proj": "value", "dense": "dense"}


def cpu_row(row: dict[str, str]) -> dict[str, str]:
    """The CPU version of one paper row (see the module docstring)."""
    out = scale_row(row, K)
    out["model"] = MODEL
    out["eval_steps"] = str(EVAL_STEPS)
    if row["lora_modules"]:
        out["lora_modules"] = ",".join(BERT_NAMES[m] for m in row["lora_modules"].split(","))
    return out


def main() -> int:
    rows = [r for r in load_table() if r["rank"] == "2" and r["task_name"] in TASKS and r["script"] in METHODS]
    out = HERE / "cpu_hparams.tsv"
    write_table([cpu_row(r) for r in rows], str(out))
    print(f"wrote {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
