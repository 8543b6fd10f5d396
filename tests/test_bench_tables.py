"""bench/cpu_hparams.tsv is what bench/make_cpu_hparams.py derives from scripts/hparams.tsv, scaled as documented."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from _run_glue_utils import import_bench

REPO = Path(__file__).resolve().parent.parent


def _generator():
    return import_bench("make_cpu_hparams")


def test_committed_table_is_the_generated_one(tmp_path, monkeypatch):
    gen = _generator()
    monkeypatch.setattr(gen, "HERE", tmp_path)
    assert gen.main() == 0
    assert (tmp_path / "cpu_hparams.tsv").read_text() == (REPO / "bench" / "cpu_hparams.tsv").read_text()


def test_rte_schedule_scaled_to_the_cpu_run_length():
    gen = _generator()
    rows = {r["script"]: r for r in gen.load_table(REPO / "bench" / "cpu_hparams.tsv") if r["task_name"] == "rte"}
    T = 50 * math.ceil(2490 / 32)  # the paper's RTE updates: 50 epochs of 78
    assert T == 3900 and gen.STEPS == 120 and gen.BATCH == 16
    vilora = rows["vilora_clr"]
    # tinit 600, tfinal 1800, warm-up 100, constant LR until update 400, all x 120/3900 (rounded)
    assert (vilora["adalora_tinit"], vilora["adalora_tfinal"], vilora["num_warmup_steps"]) == ("18", "55", "3")
    # the constant phase is given in epochs of the CPU batch (156 updates of 16), so that it is not read as steps
    assert float(vilora["lr_schedule_const_epochs"]) * 156 == __import__("pytest").approx(12, abs=0.01)
    assert vilora["per_device_train_batch_size"] == "16"
    assert vilora["adalora_delta_t"] == "1" and vilora["learning_rate"] == "1.0"  # the paper's LR is kept
    assert "max_train_steps=120" in vilora["other"].split()
    assert all(r["lora_modules"] == "query,key,value,dense" for r in rows.values())
    assert set(rows) == {"lora_all", "adalora", "adalora_ivon_clr", "vilora_clr", "vilora_clr_criterion"}


def test_grid_dry_run_lists_57_runs(glue_dir):
    out = subprocess.run(["bash", str(REPO / "bench" / "cpu_glue.sh")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "GLUE_DIR": str(glue_dir),
                              "PYTHON": sys.executable, "MODEL": "/some/minilm", "OUTPUT_ROOT": "/tmp/none"},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    commands = [line for line in out.stdout.splitlines() if "run_glue_no_trainer.py" in line]
    assert len(commands) == 4 * 4 * 3 + 3 * 3  # tasks x methods x seeds + RTE x 3 other criteria x seeds
    assert all("--model_name_or_path /some/minilm" in c and "--max_train_steps 120" in c for c in commands)
