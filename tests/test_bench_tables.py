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


def test_rows_are_the_paper_rows_a_quarter_as_long():
    gen = _generator()
    rows = {r["script"]: r for r in gen.load_table(REPO / "bench" / "cpu_hparams.tsv") if r["task_name"] == "rte"}
    T = 50 * math.ceil(2490 / 32)  # the paper's RTE updates: 50 epochs of 78
    assert T == 3900 and gen.K == 4
    vilora = rows["vilora_clr"]
    # tinit 600, tfinal 1800, warm-up 100, constant LR until update 400, all / 4; batch and lr as the paper
    assert (vilora["adalora_tinit"], vilora["adalora_tfinal"], vilora["num_warmup_steps"]) == ("150", "450", "25")
    assert "lr_schedule_const_steps=100" in vilora["other"].split() and vilora["lr_schedule_const_epochs"] == ""
    assert vilora["per_device_train_batch_size"] == "32" and vilora["max_length"] == "320"
    # the decaying phase's lr 0.5 x 4: its integral over the 4 times shorter phase is the paper's
    assert (vilora["lr_schedule_first_lr"], vilora["lr_schedule_second_lr"]) == ("2.0", "2")
    assert vilora["adalora_delta_t"] == "1" and vilora["learning_rate"] == "1.0"
    assert "max_train_steps=975" in vilora["other"].split() and vilora["eval_steps"] == "100"
    assert rows["adalora"]["learning_rate"] == "1.2e-3"  # AdamW rows keep their lr
    assert rows["lora_all"]["lora_modules"] == "query,key,value,dense"  # the paper's DeBERTa names, in BERT's
    assert rows["vilora_clr"]["lora_modules"] == rows["adalora"]["lora_modules"] == ""  # the library default
    assert set(rows) == {"lora_all", "adalora", "adalora_ivon_clr", "vilora_clr", "vilora_clr_criterion"}


def test_grid_dry_run_lists_66_runs(glue_dir):
    out = subprocess.run(["bash", str(REPO / "bench" / "cpu_glue.sh")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "GLUE_DIR": str(glue_dir),
                              "PYTHON": sys.executable, "MODEL": "/some/minilm", "OUTPUT_ROOT": "/tmp/none"},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    commands = [line for line in out.stdout.splitlines() if "run_glue_no_trainer.py" in line]
    # tasks x methods x seeds + (MRPC, STS-B) x 3 other criteria x seeds
    assert len(commands) == 4 * 4 * 3 + 2 * 3 * 3
    assert all("--model_name_or_path /some/minilm" in c for c in commands)
    steps = {"rte": 975, "mrpc": 862, "stsb": 1125, "cola": 1675}
    assert all(f"--max_train_steps {steps[c.split('--task_name ')[1].split()[0]]}" in c for c in commands)
