"""scripts/short_horizon.py: the paper's rows compressed by the rule, checked against hand-computed values."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from _run_glue_utils import REPO

sys.path.insert(0, str(REPO / "scripts"))
import short_horizon  # noqa: E402
from sweep import load_table  # noqa: E402


def _row(script, task="mrpc"):
    return next(r for r in load_table() if (r["script"], r["task_name"], r["rank"]) == (script, task, "2"))


def test_vilora_row_at_a_quarter_of_the_horizon():
    """MRPC: 3,450 updates -> 862; warm-up 100, tinit 600, tfinal 1800, constant phase to 400 all / 4; the
    decaying phase's lr 0.5 x 4 = 2.0, its integral kept: 0.5 x (3450 - 400) / 2 == 2.0 x (862 - 100) / 2 (to
    rounding)."""
    row = short_horizon.scale_row(_row("vilora_clr"), 4)
    assert short_horizon.paper_updates(_row("vilora_clr")) == 3450  # 30 epochs x ceil(3668 / 32)
    assert (row["num_warmup_steps"], row["adalora_tinit"], row["adalora_tfinal"], row["adalora_delta_t"]) == \
        ("25", "150", "450", "1")
    assert (row["lr_schedule_first_lr"], row["lr_schedule_second_lr"], row["lr_schedule_const_epochs"]) == \
        ("2.0", "2", "")
    other = dict(item.split("=") for item in row["other"].split())
    assert other["max_train_steps"] == "862" and other["lr_schedule_const_steps"] == "100"
    assert "ivon_beta2" not in other and row["learning_rate"] == "0.4" and row["eval_steps"] == "300"
    assert 2.0 * (862 - 100) / 2 == pytest.approx(0.5 * (3450 - 400) / 2, rel=0.01)


def test_the_rule_stops_where_the_decaying_lr_would_pass_the_peak():
    assert short_horizon.max_scale(_row("vilora_clr")) == 4.0          # 2.0 / 0.5
    assert short_horizon.max_scale(_row("vilora_clr", "stsb")) == 5.0  # 2.0 / 0.4
    assert short_horizon.scale_row(_row("vilora_clr", "stsb"), 5)["lr_schedule_second_lr"] == "2"
    with pytest.raises(ValueError, match="k <= 4"):
        short_horizon.scale_row(_row("vilora_clr"), 4.5)
    with pytest.raises(ValueError, match="custom-schedule"):
        short_horizon.scale_row(_row("vilora", "qnli"), 2)


def test_adamw_rows_keep_their_learning_rate():
    row = short_horizon.scale_row(_row("adalora"), 10)
    assert row["learning_rate"] == "1e-3" and row["adalora_tinit"] == "60"
    with pytest.raises(ValueError, match="k must be >= 1"):
        short_horizon.scale_row(_row("adalora"), 0.5)


def test_table_for_launch(tmp_path):
    out = tmp_path / "k4.tsv"
    cmd = [sys.executable, str(REPO / "scripts" / "short_horizon.py"), "--scale", "4", "--script", "vilora_clr",
           "adalora", "--task", "mrpc", "stsb", "--eval_steps", "100", "--table", str(out)]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    rows = list(csv.DictReader(out.open(), delimiter="\t"))
    assert {(r["script"], r["task_name"]) for r in rows} == {(s, t) for s in ("vilora_clr", "adalora")
                                                             for t in ("mrpc", "stsb")}
    assert {r["eval_steps"] for r in rows} == {"100"}
    bad = subprocess.run(cmd[:2] + ["--scale", "5"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "k <= 4" in bad.stderr
