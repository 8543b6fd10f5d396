"""Sweep drivers, hyperparameter table, results summary and plots (scripts/).

The drivers are checked through their DRY_RUN output: every printed command is parsed back into flags and
compared with the rows of the authors' table tests/data/authors_hparams.tsv (and with the repo's copy,
scripts/hparams.tsv, which all scripts read), so that each of the 88 original runs is reproduced flag for
flag. Real sweeps use a stub training script (TRAIN_SCRIPT knob) that fails for one task, to check skipping,
failure handling and the summary. summarize.py is checked on synthetic result folders with hand-computed numbers.
"""
from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _run_glue_utils import import_script

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
REPO_TABLE = SCRIPTS / "hparams.tsv"
# Every hyperparameter of the authors' sweep scripts, the reference REPO_TABLE must equal (tests/data/README.md).
AUTHORS_TABLE = Path(__file__).resolve().parent / "data" / "authors_hparams.tsv"
PYTHON = sys.executable

# Method script -> the values of the table's `script` column it runs.
METHOD_SCRIPTS = {
    "full.sh": ["full", "full_ivon"], "lora_all.sh": ["lora_all"], "adalora.sh": ["adalora"],
    "adalora_ivon.sh": ["adalora_ivon"], "adalora_ivon_clr.sh": ["adalora_ivon_clr"], "vilora.sh": ["vilora"],
    "vilora_clr.sh": ["vilora_clr"], "vilora_criterion.sh": ["vilora_criterion"],
    "vilora_clr_criterion.sh": ["vilora_clr_criterion"],
}
KNOBS = ("TASKS", "RANK", "SEEDS", "CRITERIA", "MODEL", "GLUE_DIR", "OUTPUT_ROOT", "EXTRA_ARGS", "PYTHON",
         "TRAIN_SCRIPT", "LAUNCHER", "NUM_PROCESSES", "ACCELERATE", "ACCELERATE_ARGS", "PARTITION", "GPUS",
         "TIME_LIMIT", "SBATCH_ARGS", "DRY_RUN", "DONE_ROOT", "HPARAMS")
META = ("rank", "task_name", "script", "model", "seeds", "other")
SWITCHES = {"use_ivon", "use_custom_lr_schedule", "apply_lora", "gradient_checkpointing"}


def _module(name: str):
    return import_script(name)


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def tables() -> list[Path]:
    return [REPO_TABLE, AUTHORS_TABLE]


def run_script(script: str, root: Path, args: tuple[str, ...] = (), **knobs: str) -> subprocess.CompletedProcess:
    """Run a driver with only the given knobs set (knobs from the caller's environment are removed)."""
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    env.update(OUTPUT_ROOT=str(root), PYTHON=PYTHON, **knobs)
    return subprocess.run(["bash", str(SCRIPTS / script), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def dry_run(script: str, root: Path, args: tuple[str, ...] = (), **knobs: str) -> list[list[str]]:
    res = run_script(script, root, args, DRY_RUN="1", **knobs)
    assert res.returncode == 0, res.stderr
    return [shlex.split(line) for line in res.stdout.splitlines() if line and not line.startswith("#")]


def training_words(words: list[str]) -> list[str]:
    """The arguments after the training script, unwrapping sbatch --wrap and accelerate launch."""
    if words[0] == "sbatch":
        words = shlex.split(words[words.index("--wrap") + 1])
    i = next(i for i, w in enumerate(words) if w.endswith(".py"))
    return words[i + 1:]


def flag_dict(words: list[str]) -> dict[str, str | bool]:
    """``--name value`` -> {name: value}; a flag followed by another flag (or nothing) -> True."""
    flags: dict[str, str | bool] = {}
    i = 0
    while i < len(words):
        assert words[i].startswith("--"), words[i]
        name = words[i][2:]
        assert name not in flags, f"--{name} given twice"
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            flags[name], i = words[i + 1], i + 2
        else:
            flags[name], i = True, i + 1
    return flags


def expected_flags(row: dict[str, str], seed: str, out: Path) -> dict[str, str | bool]:
    """What a command for ``row`` must say, derived from the table independently of scripts/sweep.py."""
    flags: dict[str, str | bool] = {"task_name": row["task_name"], "model_name_or_path": row["model"],
                                    "seed": seed, "output_dir": str(out)}
    for name, value in row.items():
        if name not in META and value:
            flags[name] = True if name in SWITCHES else value
    for item in row["other"].split():
        name, _, value = item.partition("=")
        flags[name] = True if name in SWITCHES else value
    return flags


def run_dir(root: Path, row: dict[str, str], seed: str) -> Path:
    method = row["script"] + (f"-{row['vilora_criterion']}" if row["vilora_criterion"] else "")
    return root / method / f"rank{row['rank']}" / row["task_name"] / f"seed{seed}"


# ------------------------------------------------------------------------------------------ the table
def test_repo_table_is_the_reference_table():
    assert read_table(REPO_TABLE) == read_table(AUTHORS_TABLE)


def test_table_shape():
    rows = read_table(REPO_TABLE)
    assert len(rows) == 88
    by_script = {m: sum(r["script"] == m for r in rows) for m in {r["script"] for r in rows}}
    assert by_script == {"adalora": 16, "adalora_ivon": 8, "adalora_ivon_clr": 8, "full": 7, "full_ivon": 1,
                         "lora_all": 16, "vilora": 8, "vilora_clr": 8, "vilora_criterion": 8,
                         "vilora_clr_criterion": 8}
    assert {m for ms in METHOD_SCRIPTS.values() for m in ms} == set(by_script)


# ------------------------------------------------------------------------------------- dry-run commands
@pytest.fixture(scope="module")
def grid_commands(tmp_path_factory) -> tuple[Path, dict[Path, dict[str, str | bool]]]:
    """Every method script at ranks 2 and 4 (criterion scripts with CRITERIA = the row's criterion):
    output dir -> flags."""
    root = tmp_path_factory.mktemp("grid")
    rows = read_table(REPO_TABLE)
    commands: dict[Path, dict[str, str | bool]] = {}
    for script, methods in METHOD_SCRIPTS.items():
        for rank in ("2", "4"):
            mine = [r for r in rows if r["script"] in methods and r["rank"] == rank]
            if not mine:
                continue
            criteria = " ".join(sorted({r["vilora_criterion"] for r in mine if r["vilora_criterion"]}))
            for words in dry_run(script, root, RANK=rank, CRITERIA=criteria):
                flags = flag_dict(training_words(words))
                out = Path(flags["output_dir"])
                assert out not in commands, f"{out} planned twice"
                commands[out] = flags
    return root, commands


@pytest.mark.parametrize("table", tables(), ids=lambda p: p.parent.name)
def test_dry_run_reproduces_every_row_of_the_table(grid_commands, table):
    root, commands = grid_commands
    rows = read_table(table)
    expected = {}
    for row in rows:
        for seed in row["seeds"].split(","):
            out = run_dir(root, row, seed)
            expected[out] = expected_flags(row, seed, out)
    assert len(rows) == 88 and len(expected) == 88 * 5
    assert set(commands) == set(expected)
    for out, flags in expected.items():
        assert commands[out] == flags, out


def test_no_rank_4_full_runs(tmp_path):
    res = run_script("full.sh", tmp_path, DRY_RUN="1", RANK="4")
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and "no rank-4 rows" in res.stderr


@pytest.mark.parametrize("script,tasks", [
    ("full.sh", {"cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"}),
    ("lora_all.sh", {"cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"}),
    ("adalora.sh", {"cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"}),
    ("adalora_ivon.sh", {"sst2", "qnli", "mnli", "qqp"}),
    ("adalora_ivon_clr.sh", {"cola", "stsb", "mrpc", "rte"}),
    ("vilora.sh", {"sst2", "qnli", "mnli", "qqp"}),
    ("vilora_clr.sh", {"cola", "stsb", "mrpc", "rte"}),
])
def test_defaults_are_the_table_tasks_at_rank_2_and_five_seeds(tmp_path, script, tasks):
    commands = [flag_dict(training_words(w)) for w in dry_run(script, tmp_path)]
    assert {c["task_name"] for c in commands} == tasks
    assert len(commands) == 5 * len(tasks)
    for task in tasks:
        assert sorted(c["seed"] for c in commands if c["task_name"] == task) == [str(s) for s in range(2021, 2026)]
    assert all(f"{os.sep}rank2{os.sep}" in c["output_dir"] for c in commands)
    assert all(c["model_name_or_path"] == "microsoft/deberta-v3-base" for c in commands)
    if script == "full.sh":  # STS-B full fine-tuning is the table's full_ivon row: IVON, wd 1e-5
        stsb = [c for c in commands if c["task_name"] == "stsb"]
        assert all(c["use_ivon"] is True and c["ivon_weight_decay"] == "1e-5" for c in stsb)
        assert all(Path(c["output_dir"]).parts[-4] == "full_ivon" for c in stsb)
        assert not any("use_ivon" in c for c in commands if c["task_name"] != "stsb")


@pytest.mark.parametrize("script", ["vilora_criterion.sh", "vilora_clr_criterion.sh"])
@pytest.mark.parametrize("rank", ["2", "4"])
def test_criterion_scripts_sweep_the_four_paper_criteria(tmp_path, script, rank):
    method = script[:-3]
    rows = {r["task_name"]: r for r in read_table(REPO_TABLE) if r["script"] == method and r["rank"] == rank}
    commands = [flag_dict(training_words(w)) for w in dry_run(script, tmp_path, RANK=rank)]
    assert len(commands) == 4 * 5 * len(rows)
    for c in commands:
        out = Path(c["output_dir"])
        criterion = c["vilora_criterion"]
        assert out.parts[-4] == f"{method}-{criterion}"
        row = dict(rows[c["task_name"]], vilora_criterion=criterion)
        assert c == expected_flags(row, c["seed"], out)
    assert {c["vilora_criterion"] for c in commands} == {"SNR_mean_abs", "SNR", "mean", "sigma"}


def test_knobs_reach_the_command(tmp_path):
    commands = dry_run("adalora.sh", tmp_path, args=("--eval_steps", "5"), TASKS="rte,cola", RANK="4",
                       SEEDS="7 8", MODEL="/models/tiny", GLUE_DIR="/data/glue",
                       EXTRA_ARGS="--max_train_steps 3 --project_prefix 'a b'")
    assert len(commands) == 4
    words = training_words(commands[0])
    # EXTRA_ARGS, then the script's own arguments, come last so that they override table values.
    assert words[-6:] == ["--max_train_steps", "3", "--project_prefix", "a b", "--eval_steps", "5"]
    flags = [flag_dict(training_words(w)[:-6]) for w in commands]
    assert [(f["task_name"], f["seed"]) for f in flags] == [("rte", "7"), ("rte", "8"), ("cola", "7"), ("cola", "8")]
    assert all(f["model_name_or_path"] == "/models/tiny" and f["glue_dir"] == "/data/glue" for f in flags)
    assert all(f["adalora_target_r"] == "4" and f["adalora_init_r"] == "6" for f in flags)
    assert flags[0]["output_dir"] == str(tmp_path / "adalora" / "rank4" / "rte" / "seed7")


def test_criteria_knob_is_ignored_with_a_note_by_scripts_without_criterion(tmp_path):
    res = run_script("adalora.sh", tmp_path, DRY_RUN="1", CRITERIA="mean", TASKS="rte", SEEDS="1")
    assert res.returncode == 0 and "CRITERIA is ignored" in res.stderr
    assert "--vilora_criterion" not in res.stdout


@pytest.mark.parametrize("knobs,message", [
    ({"RANK": "3"}, "RANK must be 2 or 4"),
    ({"TASKS": "wnli"}, "no rank-2 row for task 'wnli'"),
    ({"CRITERIA": "snr"}, "unknown criterion 'snr'"),
    ({"SEEDS": "x"}, "seed 'x'"),
    ({"LAUNCHER": "ssh"}, "LAUNCHER must be"),
    ({"EXTRA_ARGS": "--x 'unclosed"}, "quotation"),
])
def test_bad_knobs_fail_with_one_line(tmp_path, knobs, message):
    res = run_script("vilora_criterion.sh", tmp_path, DRY_RUN="1", **knobs)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


def test_missing_training_script_fails_before_running(tmp_path):
    res = run_script("vilora.sh", tmp_path, TRAIN_SCRIPT=str(tmp_path / "nope.py"))
    assert res.returncode == 2 and "not found" in res.stderr
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------- launchers
def test_sbatch_dry_run(tmp_path):
    (words,) = dry_run("vilora_clr.sh", tmp_path, LAUNCHER="sbatch", TASKS="rte", SEEDS="2021",
                       PARTITION="gpu", GPUS="2", TIME_LIMIT="01:00:00", SBATCH_ARGS="--mem=32G --cpus-per-task=4")
    out = tmp_path / "vilora_clr" / "rank2" / "rte" / "seed2021"
    assert words[0] == "sbatch"
    opts = words[1:words.index("--wrap")]
    for expected in (["--partition", "gpu"], ["--gres", "gpu:2"], ["--time", "01:00:00"],
                     ["--output", str(out / "train.log")], ["--job-name", "vilora_clr_rank2_rte_seed2021"]):
        i = opts.index(expected[0])
        assert opts[i:i + 2] == expected
    assert opts[-2:] == ["--mem=32G", "--cpus-per-task=4"]
    wrapped = shlex.split(words[words.index("--wrap") + 1])
    assert wrapped[:3] == ["exec", PYTHON, str(REPO / "run_glue_no_trainer.py")]
    row = next(r for r in read_table(REPO_TABLE)
               if (r["script"], r["rank"], r["task_name"]) == ("vilora_clr", "2", "rte"))
    assert flag_dict(wrapped[3:]) == expected_flags(row, "2021", out)


def test_sbatch_submits_and_counts(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "submitted.txt"
    fake = bin_dir / "sbatch"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {record}\necho Submitted batch job 42\n")
    fake.chmod(0o755)
    root = tmp_path / "out"
    res = run_script("vilora.sh", root, LAUNCHER="sbatch", TASKS="qnli", SEEDS="1 2",
                     TRAIN_SCRIPT=str(tmp_path / "any.py"), PATH=f"{bin_dir}:{os.environ['PATH']}")
    # TRAIN_SCRIPT must exist even when only submitting: the job would fail on it later.
    assert res.returncode == 2
    (tmp_path / "any.py").write_text("")
    res = run_script("vilora.sh", root, LAUNCHER="sbatch", TASKS="qnli", SEEDS="1 2",
                     TRAIN_SCRIPT=str(tmp_path / "any.py"), PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert res.returncode == 0, res.stderr
    assert len(record.read_text().splitlines()) == 2
    assert (root / "vilora" / "rank2" / "qnli" / "seed1").is_dir()  # sbatch --output needs the folder
    assert "summary: 2 submitted, 0 failed, 0 skipped, of 2 runs" in res.stderr


def test_accelerate_dry_run(tmp_path):
    (words,) = dry_run("adalora.sh", tmp_path, LAUNCHER="accelerate", NUM_PROCESSES="1", TASKS="rte",
                       SEEDS="1", ACCELERATE="/opt/bin/accelerate")
    assert words[:5] == ["/opt/bin/accelerate", "launch", "--num_processes", "1", str(REPO / "run_glue_no_trainer.py")]
    (words,) = dry_run("adalora.sh", tmp_path, LAUNCHER="accelerate", TASKS="rte", SEEDS="1")
    assert Path(words[0]).name == "accelerate" and words[1] == "launch"


def test_accelerate_several_processes_dry_run(tmp_path):
    """NUM_PROCESSES > 1 asks accelerate for data-parallel processes (--multi_gpu; without it accelerate starts
    one), ACCELERATE_ARGS go to accelerate (e.g. several machines), and the training flags stay the table's."""
    (one,) = dry_run("vilora.sh", tmp_path, TASKS="sst2", SEEDS="1")
    (words,) = dry_run("vilora.sh", tmp_path, LAUNCHER="accelerate", NUM_PROCESSES="4", TASKS="sst2", SEEDS="1",
                       ACCELERATE="/opt/bin/accelerate",
                       ACCELERATE_ARGS="--num_machines 2 --machine_rank 1 --main_process_ip 10.0.0.1")
    script = words.index(str(REPO / "run_glue_no_trainer.py"))
    assert words[:script] == ["/opt/bin/accelerate", "launch", "--num_processes", "4", "--multi_gpu",
                              "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1"]
    assert training_words(words) == training_words(one)
    (words,) = dry_run("vilora.sh", tmp_path, LAUNCHER="sbatch", NUM_PROCESSES="2", TASKS="sst2", SEEDS="1")
    wrapped = shlex.split(words[words.index("--wrap") + 1])
    assert wrapped[1].endswith("accelerate") and wrapped[2:6] == ["launch", "--num_processes", "2", "--multi_gpu"]


# ------------------------------------------------------------------------------------------ real sweeps
STUB = """\
import json, os, sys
args = sys.argv[1:]
value = lambda name: args[args.index(name) + 1]
print("stub stdout", value("--task_name"))
print("stub stderr", file=sys.stderr)
if value("--task_name") == "rte":
    sys.exit(3)
if value("--task_name") == "mrpc":
    sys.exit(0)  # claims success but writes no results
out = value("--output_dir")
os.makedirs(out, exist_ok=True)
json.dump({"eval_matthews_correlation": 0.5}, open(os.path.join(out, "all_results.json"), "w"))
"""


def test_sweep_skips_done_runs_and_goes_on_after_failures(tmp_path):
    stub = tmp_path / "stub.py"
    stub.write_text(STUB)
    root = tmp_path / "out"
    done = root / "vilora_clr" / "rank2" / "cola" / "seed1"
    done.mkdir(parents=True)
    (done / "all_results.json").write_text("{}")
    # The failing task comes first: the sweep must go on to the others.
    res = run_script("vilora_clr.sh", root, TASKS="rte mrpc cola", SEEDS="1 2", TRAIN_SCRIPT=str(stub))
    assert res.returncode == 1
    assert res.stderr.splitlines()[-5] == "summary: 1 done, 4 failed, 1 skipped, of 6 runs"
    assert "skip (all_results.json exists): vilora_clr/rank2/cola/seed1" in res.stderr
    assert "exit 0 without all_results.json" in res.stderr
    assert (done / "all_results.json").read_text() == "{}"  # not rerun
    assert not (done / "train.log").exists()
    assert (root / "vilora_clr" / "rank2" / "cola" / "seed2" / "all_results.json").is_file()
    log = (root / "vilora_clr" / "rank2" / "rte" / "seed1" / "train.log").read_text()
    assert log.startswith("=== ") and "--task_name rte" in log.splitlines()[0]
    assert "stub stdout rte" in log and "stub stderr" in log
    # A second pass reruns only the failures and appends to their logs.
    res = run_script("vilora_clr.sh", root, TASKS="rte mrpc cola", SEEDS="1 2", TRAIN_SCRIPT=str(stub))
    assert res.returncode == 1
    assert "summary: 0 done, 4 failed, 2 skipped, of 6 runs" in res.stderr
    log = (root / "vilora_clr" / "rank2" / "rte" / "seed1" / "train.log").read_text()
    assert log.count("stub stdout rte") == 2
    res = run_script("vilora_clr.sh", root, TASKS="cola", SEEDS="1 2", TRAIN_SCRIPT=str(stub))
    assert res.returncode == 0 and "summary: 0 done, 0 failed, 2 skipped, of 2 runs" in res.stderr


def test_interrupt_stops_the_sweep_and_the_run(tmp_path):
    stub = tmp_path / "slow.py"
    stub.write_text("import os, sys, time\n"
                    f"open({str(tmp_path / 'pids')!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
                    "time.sleep(60)\n")
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    env.update(OUTPUT_ROOT=str(tmp_path / "out"), PYTHON=PYTHON, TRAIN_SCRIPT=str(stub), TASKS="rte", SEEDS="1 2")
    # A shell that starts with SIGINT ignored (e.g. pytest run in the background by a non-interactive shell)
    # cannot trap it, so give the sweep the default disposition, as a terminal's Ctrl-C would find it.
    proc = subprocess.Popen(["bash", str(SCRIPTS / "vilora_clr.sh")], env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pids = tmp_path / "pids"
    for _ in range(200):
        if pids.exists() and pids.read_text().endswith("\n"):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and "launch: interrupted (stopped the run in progress)" in err
    (pid,) = pids.read_text().split()  # the second run never started
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)


def test_done_root_skips_kept_results(tmp_path):
    """DONE_ROOT: a run whose result is kept under a second root (a sweep finished on a new machine from its
    committed results) is skipped like a finished one; the others run; a DONE_ROOT that is not a folder is refused."""
    kept = tmp_path / "kept" / "vilora" / "rank2" / "qnli" / "seed2"
    kept.mkdir(parents=True)
    (kept / "all_results.json").write_text("{}")
    out = tmp_path / "out"
    res = run_script("vilora.sh", out, DRY_RUN="1", TASKS="qnli", SEEDS="1 2 3", DONE_ROOT=str(tmp_path / "kept"))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[1] == f"# skip (done in DONE_ROOT): {kept}"
    assert "--seed 1 " in lines[0] + " " and "--seed 3 " in lines[2] + " "
    assert "[2/3] skip (done in DONE_ROOT): vilora/rank2/qnli/seed2" in res.stderr
    assert "summary: 2 to run (dry run), 0 failed, 1 skipped, of 3 runs" in res.stderr
    assert not out.exists()
    res = run_script("vilora.sh", out, DRY_RUN="1", TASKS="qnli", SEEDS="1", DONE_ROOT=str(tmp_path / "none"))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == (f"launch: error: DONE_ROOT={tmp_path / 'none'} is not a folder "
                                  "(a root of finished runs, or unset)")


def test_dry_run_marks_done_runs(tmp_path):
    done = tmp_path / "vilora" / "rank2" / "qnli" / "seed2"
    done.mkdir(parents=True)
    (done / "all_results.json").write_text("{}")
    res = run_script("vilora.sh", tmp_path, DRY_RUN="1", TASKS="qnli", SEEDS="1 2")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[1] == f"# skip (done): {done}"
    assert "--seed 1 " in lines[0] + " "
    assert "summary: 1 to run (dry run), 0 failed, 1 skipped, of 2 runs" in res.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["vilora", "rank2", "qnli", "seed2",
                                                                 "all_results.json"])


# ------------------------------------------------------------------------------------------- summarize
def _result(root: Path, rel: str, **values: float) -> None:
    d = root / rel
    d.mkdir(parents=True)
    (d / "all_results.json").write_text(json.dumps(values))


@pytest.fixture
def results_root(tmp_path) -> Path:
    root = tmp_path / "res"
    _result(root, "vilora/rank2/mnli/seed2021", eval_accuracy=0.90, eval_accuracy_mm=0.92)
    _result(root, "vilora/rank2/mnli/seed2022", eval_accuracy=0.91, eval_accuracy_mm=0.93)
    for seed, acc in zip((2021, 2022, 2023), (0.80, 0.82, 0.84)):
        _result(root, f"vilora_clr/rank2/rte/seed{seed}", eval_accuracy=acc)
    _result(root, "vilora/rank2/qqp/seed2021", eval_accuracy=0.92, eval_f1=0.88)
    _result(root, "full_ivon/rank2/stsb/seed2021", eval_pearson=0.91, eval_spearmanr=0.90)
    _result(root, "full/rank2/cola/seed2021", eval_matthews_correlation=0.70)
    _result(root, "full/rank2/cola/seed2022", eval_matthews_correlation=0.66)
    _result(root, "vilora_criterion-mean/rank4/sst2/seed2021", eval_accuracy=0.95)
    _result(root, "vilora/rank2/sst2/seed2021", eval_f1=0.5)  # no accuracy: ignored with a warning
    # Outside the layout: placed by run_config.json.
    _result(root, "misc/run7", eval_accuracy=0.5, task_name="qnli", seed=7)
    (root / "misc/run7/run_config.json").write_text(json.dumps(
        {"args": {"task_name": "qnli", "apply_lora": True, "lora_type": "adalora", "use_ivon": True,
                  "use_custom_lr_schedule": False, "adalora_target_r": 4}}))
    return root


def test_summarize_numbers(results_root):
    res = subprocess.run([PYTHON, str(SCRIPTS / "summarize.py"), str(results_root)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "vilora/rank2/sst2/seed2021/all_results.json: no eval_accuracy" in res.stderr
    md = (results_root / "summary.md").read_text()
    assert res.stdout == md
    table = {line.split(" | ")[0][2:]: line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
    # vilora rank 2 (merged with vilora_clr): MNLI m 90.50±0.71, mm 92.50±0.71; RTE 82.00±2.00 (sample std);
    # QQP 92/88 with one seed. Avg over mnli, qqp, rte = (91.5 + 90 + 82) / 3 = 87.8333.
    vilora = table["vilora"]
    assert vilora[1] == "2"
    assert vilora[2] == "90.50±0.71 / 92.50±0.71 (2)"
    assert vilora[5] == "92.00 / 88.00 (1)"
    assert vilora[7] == "82.00±2.00 (3)"
    assert vilora[10:12] == ["87.83", "mnli, qqp, rte |"]
    # full: CoLA (70, 66) -> 68.00 ± 2.83; STS-B from full_ivon; avg (68 + 91) / 2.
    full = table["full"]
    assert full[4] == "68.00±2.83 (2)" and full[9] == "91.00 (1)" and full[10] == "79.50"
    assert table["adalora_ivon"][1:2] == ["4"] and table["adalora_ivon"][6] == "50.00 (1)"
    assert table["vilora_criterion-mean"][3] == "95.00 (1)"
    assert "| *paper:* AdaLoRA (final avg rank 2) (0.32M params) | – | 90.66/90.70 |" in md
    assert "88.86 | all 8 |" in md
    assert "ddof=1" in md
    rows = list(csv.DictReader(open(results_root / "summary.csv")))
    mm = next(r for r in rows if r["method"] == "vilora" and r["metric"] == "accuracy_mm")
    assert (float(mm["mean"]), float(mm["std"]), mm["n"], mm["detail"]) == (92.5, 0.7071, "2", "2021;2022")
    avg = next(r for r in rows if r["method"] == "vilora" and r["task"] == "avg")
    assert float(avg["mean"]) == pytest.approx(87.8333) and avg["detail"] == "mnli;qqp;rte"
    paper = [r for r in rows if r["source"] == "adalora_paper"]
    assert len(paper) == 5 * 11


def test_summarize_no_merge_and_hand_checked_std(results_root):
    summarize = _module("summarize")
    rows = summarize.group(summarize.find_runs(results_root), merge=False)
    assert ("vilora_clr", "2") in rows and ("full_ivon", "2") in rows
    rte = rows[("vilora_clr", "2")]["rte"]
    assert rte.means() == [pytest.approx(82.0)]
    assert rte.stds() == [pytest.approx(statistics.stdev([80.0, 82.0, 84.0]))] == [pytest.approx(2.0)]
    assert rows[("vilora", "2")]["mnli"].score() == pytest.approx(91.5)
    assert summarize.method_from_config({"apply_lora": True, "lora_type": "vilora", "use_custom_lr_schedule": True,
                                         "vilora_criterion": "sigma", "adalora_target_r": 2}) == \
        ("vilora_clr_criterion-sigma", "2")


def test_summarize_without_runs(tmp_path):
    res = subprocess.run([PYTHON, str(SCRIPTS / "summarize.py"), str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 1 and "no finished runs" in res.stderr


# ----------------------------------------------------------------------------------------------- plots
PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_ranks_deberta(tmp_path):
    plot_ranks = _module("plot_ranks")
    pattern = {}
    kept = {}
    for layer in range(3):
        for i, m in enumerate(["attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
                               "attention.output.dense", "intermediate.dense", "output.dense"]):
            k = (layer + i) % 4
            pattern[f"deberta.encoder.layer.{layer}.{m}.lora_E"] = [True] * k + [False] * (3 - k)
            kept[(layer, i)] = k
    pattern["pooler.dense.lora_E"] = [True, False, False]
    (tmp_path / "rank_pattern.json").write_text(json.dumps(pattern))
    ranks, init_r = plot_ranks.load_rank_pattern(tmp_path)
    assert init_r == 3
    grid, layers, columns, outside = plot_ranks.rank_grid(ranks)
    assert layers == [0, 1, 2] and columns == plot_ranks.COLUMNS and outside == {"pooler": 1}
    assert all(grid[layer, i] == k for (layer, i), k in kept.items())
    out = plot_ranks.plot_ranks(tmp_path, tmp_path / "ranks.png")
    data = out.read_bytes()
    assert data[:8] == PNG and len(data) > 10_000


def test_plot_ranks_bert_names_and_unknown_modules(tmp_path):
    plot_ranks = _module("plot_ranks")
    pattern = {"bert.encoder.layer.1.attention.self.query.lora_E.default": [True, True, False, False],
               "bert.encoder.layer.1.attention.self.key.lora_E": [True, False, False, False],
               "bert.encoder.layer.0.attention.output.dense.lora_E": [True] * 4,
               "bert.encoder.layer.0.intermediate.dense.lora_E": [False] * 4,
               "bert.encoder.layer.0.output.dense.lora_E": [True, True, True, False],
               "bert.encoder.layer.0.attention.self.value.lora_E": [True, False, True, False],
               "bert.encoder.layer.0.crossattention.q.lora_E": [True, False, False, False],
               "bert.encoder.layer.0.crossattention.k.lora_E": [True, True, False, False],
               "classifier.dense.lora_E": [True, True, False, False]}
    (tmp_path / "adapter_config.json").write_text(json.dumps({"init_r": 4, "rank_pattern": pattern}))
    grid, layers, columns, outside = plot_ranks.rank_grid(plot_ranks.load_rank_pattern(tmp_path)[0])
    assert columns == plot_ranks.COLUMNS + ["other"]
    assert outside == {"classifier.dense": 2}
    col = {c: i for i, c in enumerate(columns)}
    assert grid[1, col["query"]] == 2 and grid[1, col["key"]] == 1 and grid[0, col["value"]] == 2
    assert grid[0, col["attention-output"]] == 4 and grid[0, col["intermediate"]] == 0
    assert grid[0, col["output"]] == 3 and grid[0, col["other"]] == 3  # two unknown modules add up
    assert str(grid[1, col["output"]]) == "nan"
    assert plot_ranks.main([str(tmp_path), "-o", str(tmp_path / "bert.png")]) == 0
    assert (tmp_path / "bert.png").read_bytes()[:8] == PNG


def test_plot_ranks_without_pattern(tmp_path, capsys):
    plot_ranks = _module("plot_ranks")
    assert plot_ranks.main([str(tmp_path)]) == 2
    assert "no rank_pattern.json" in capsys.readouterr().err


def test_plot_curves(tmp_path):
    plot_curves = _module("plot_curves")
    for seed, values in ((1, (0.5, 0.7, 0.8)), (2, (0.6, 0.7, 0.9))):
        d = tmp_path / "adalora" / "rank2" / "rte" / f"seed{seed}"
        d.mkdir(parents=True)
        lines = [{"step": 10 * i + 5, "epoch": 0, "train_loss": 1.0, "lr": 0.1} for i in range(3)]
        lines += [{"step": 10 * (i + 1), "epoch": i, "eval_accuracy": v} for i, v in enumerate(values)]
        (d / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    d = tmp_path / "vilora" / "rank2" / "cola" / "seed1"
    d.mkdir(parents=True)
    (d / "log.jsonl").write_text(json.dumps({"step": 100, "epoch": 0, "eval_matthews_correlation": 0.4}) + "\n")
    curves = plot_curves.collect(tmp_path)
    assert set(curves) == {"rte", "cola"} and len(curves["rte"]["adalora r2"]) == 2
    steps, mean, low, high = plot_curves.band(curves["rte"]["adalora r2"], "minmax")
    assert steps.tolist() == [10, 20, 30]
    assert mean.tolist() == pytest.approx([55.0, 70.0, 85.0])
    assert low.tolist() == pytest.approx([50.0, 70.0, 80.0]) and high.tolist() == pytest.approx([60.0, 70.0, 90.0])
    _, _, low, _ = plot_curves.band(curves["rte"]["adalora r2"], "std")
    assert low[0] == pytest.approx(55.0 - statistics.stdev([50.0, 60.0]))
    assert plot_curves.main([str(tmp_path)]) == 0
    data = (tmp_path / "curves.png").read_bytes()
    assert data[:8] == PNG and len(data) > 10_000
    assert plot_curves.main([str(tmp_path), "--task", "rte", "-o", str(tmp_path / "rte.png")]) == 0
    assert (tmp_path / "rte.png").read_bytes()[:8] == PNG
    assert plot_curves.main([str(tmp_path), "--task", "mnli"]) == 2


def test_plot_curves_ylim(tmp_path, capsys, monkeypatch):
    plot_curves = _module("plot_curves")
    d = tmp_path / "vilora" / "rank2" / "stsb" / "seed1"
    d.mkdir(parents=True)
    (d / "log.jsonl").write_text("".join(json.dumps({"step": s, "epoch": 0, "eval_pearson": v}) + "\n"
                                         for s, v in ((200, 0.09), (300, 0.80), (400, 0.85))))
    assert plot_curves.parse_ylim("stsb=70:88") == ("stsb", (70.0, 88.0))
    for bad, why in (("sst=1:2", "the task must be one of"), ("stsb=70", "two numbers"), ("stsb=a:b", "two numbers"),
                     ("stsb=88:70", "LOW must be below HIGH"), ("stsb=0:inf", "both finite")):
        with pytest.raises(SystemExit) as e:
            plot_curves.main([str(tmp_path), "--ylim", bad])
        assert e.value.code == 2 and why in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "curves.png").exists()
    # the axis is the one asked for, and the one point below it is named under the panel
    seen = {}
    real_savefig = plot_curves.plt.Figure.savefig

    def savefig(fig, *args, **kwargs):
        ax = fig.axes[0]
        seen["ylim"] = ax.get_ylim()
        seen["notes"] = [t.get_text() for t in ax.texts]
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(plot_curves.plt.Figure, "savefig", savefig)
    assert plot_curves.main([str(tmp_path), "--ylim", "stsb=70:88", "--ylim", "cola=0:60"]) == 0
    assert seen == {"ylim": (70.0, 88.0), "notes": ["1 point off the axis: 9.0 at 200"]}
    assert plot_curves.main([str(tmp_path)]) == 0  # without --ylim: the data's own range, no note
    assert seen["ylim"][0] < 9.0 and seen["notes"] == []


def test_curve_table(tmp_path, capsys):
    plot_curves = _module("plot_curves")
    for method, seed, values in (("adalora", 1, (0.5, 0.7, 0.8, 0.75)), ("adalora", 2, (0.6, 0.7, 0.9, 0.85)),
                                 ("vilora", 1, (0.4, 0.8, 0.8))):
        d = tmp_path / method / "rank2" / "rte" / f"seed{seed}"
        d.mkdir(parents=True)
        steps = (100, 200, 300, 345)[:len(values)]
        (d / "log.jsonl").write_text("".join(json.dumps({"step": s, "epoch": 0, "eval_accuracy": v}) + "\n"
                                             for s, v in zip(steps, values)))
    assert plot_curves.main([str(tmp_path), "--table", "200"]) == 0
    assert not (tmp_path / "curves.png").exists()
    # every 200th update and the last logged one (345); means over seeds; the best, earliest of equals
    assert capsys.readouterr().out.splitlines() == [
        "RTE, dev metric ×100 (mean over seeds):", "",
        "| run | seeds | 200 | 345 | best (update) |", "|---|---|---|---|---|",
        "| adalora r2 | 2 | 70.00 | 80.00 | 85.00 (300) |",
        "| vilora r2 | 1 | 80.00 |  | 80.00 (200) |"]
    with pytest.raises(SystemExit):
        plot_curves.main([str(tmp_path), "--table", "0"])
    assert "--table must be a positive number of updates" in capsys.readouterr().err


# ------------------------------------------------------------------------------- the real training script
def _run_glue_utils():
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import _run_glue_utils
    finally:
        sys.path.remove(str(REPO / "tests"))
    return _run_glue_utils


def _training_script():
    """run_glue_no_trainer.py as a module, shared with the script's own tests; skips while it cannot run."""
    rg = _run_glue_utils()
    if not (REPO / "run_glue_no_trainer.py").is_file() or not rg.have_adapters():
        pytest.skip("run_glue_no_trainer.py or its peft/ivon packages are not there yet")
    import run_glue_no_trainer
    return run_glue_no_trainer


def test_generated_commands_parse_with_the_training_script(grid_commands):
    """One command per table row (seed 2021) goes through run_glue_no_trainer.parse_args unchanged."""
    script = _training_script()
    _, commands = grid_commands
    for out, flags in commands.items():
        if not out.name.endswith("2021"):
            continue
        words = [w for k, v in flags.items() for w in ([f"--{k}"] if v is True else [f"--{k}", v])]
        args = script.parse_args(words)
        for k, v in flags.items():
            parsed = getattr(args, k)
            assert parsed is True if v is True else str(parsed) == v or float(parsed) == float(v), (out, k)


def test_end_to_end_with_the_training_script(tmp_path):
    """A tiny VILoRA run from vilora_clr.sh's own command, then summarize and both plots on its outputs.
    (The launcher's real-run behaviour is tested with the stub above; this checks the files it reads.)"""
    script = _training_script()
    rg = _run_glue_utils()
    model = rg.make_tiny_model(tmp_path / "model")
    glue = rg.write_tiny_glue(tmp_path / "glue", "rte")
    root = tmp_path / "out"
    # The table's RTE row, shrunk to 6 updates: budget phases and the custom schedule's constant phase too.
    extra = ("--max_train_steps 6 --max_length 32 --per_device_train_batch_size 8 --per_device_eval_batch_size 16 "
             "--adalora_tinit 1 --adalora_tfinal 2 --num_warmup_steps 1 --lr_schedule_const_epochs 0.5 "
             "--eval_steps 2 --eval_after_epochs 0")
    (words,) = dry_run("vilora_clr.sh", root, TASKS="rte", SEEDS="1", MODEL=str(model), GLUE_DIR=str(glue),
                       EXTRA_ARGS=extra)
    assert script.main(training_words(words)) == 0
    run = root / "vilora_clr" / "rank2" / "rte" / "seed1"
    summarize = _module("summarize")
    (found,) = summarize.find_runs(root)
    assert (found.method, found.rank, found.task, found.seed) == ("vilora_clr", "2", "rte", "1")
    assert found.values == [100 * json.loads((run / "all_results.json").read_text())["eval_accuracy"]]  # RTE: acc
    plot_ranks = _module("plot_ranks")
    ranks, init_r = plot_ranks.load_rank_pattern(run)
    # pruned from 3 to the table's target rank 2 on average (tfinal 2 < 6 updates: the final budget is reached)
    assert init_r == 3 and all(0 <= r <= 3 for r in ranks.values()) and sum(ranks.values()) == 2 * len(ranks)
    grid, layers, columns, _ = plot_ranks.rank_grid(ranks)
    assert layers == [0, 1] and columns == plot_ranks.COLUMNS  # every DeBERTa-v2 name is recognised
    assert plot_ranks.plot_ranks(run, tmp_path / "ranks.png").read_bytes()[:8] == PNG
    plot_curves = _module("plot_curves")
    assert plot_curves.collect(root)["rte"]["vilora_clr r2"]
    assert plot_curves.plot_curves(root, tmp_path / "curves.png").read_bytes()[:8] == PNG
