"""scripts/short_horizon.py: the paper's MRPC rows compressed tenfold, checked against hand-computed values."""
from __future__ import annotations

import sys

import pytest

from _run_glue_utils import REPO

sys.path.insert(0, str(REPO / "scripts"))
import short_horizon  # noqa: E402
from sweep import load_table  # noqa: E402


def _row(script):
    return next(r for r in load_table() if (r["script"], r["task_name"], r["rank"]) == (script, "mrpc", "2"))


def test_vilora_row_at_a_tenth_of_the_horizon():
    row = short_horizon.scale_row(_row("vilora_clr"), 10)
    assert short_horizon.paper_updates(_row("vilora_clr")) == 3450  # 30 epochs x ceil(3668 / 32)
    assert (row["num_warmup_steps"], row["adalora_tinit"], row["adalora_tfinal"], row["adalora_delta_t"]) == \
        ("10", "60", "180", "1")
    assert (row["lr_schedule_first_lr"], row["lr_schedule_second_lr"], row["lr_schedule_const_epochs"]) == \
        ("20", "5", "")
    other = dict(item.split("=") for item in row["other"].split())
    assert other["max_train_steps"] == "345" and other["lr_schedule_const_steps"] == "40"
    assert float(other["ivon_beta2"]) == pytest.approx(0.9999)


def test_adamw_rows_keep_their_learning_rate():
    row = short_horizon.scale_row(_row("adalora"), 10)
    assert row["learning_rate"] == "1e-3" and "ivon_beta2" not in row["other"]
    with pytest.raises(ValueError, match="k must be >= 1"):
        short_horizon.scale_row(_row("adalora"), 0.5)
