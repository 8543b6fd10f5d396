"""Bad runs must not break the results tools (scripts/): summarize.py, plot_curves.py and launch.sh.

Each test builds the hostile input a real sweep can leave behind (the training script's own NaN metrics,
truncated or non-object JSON files, zero-padded seed folders, a symlinked summary, a log line still being
written, a path blocked by a file, knobs holding newlines, a run folder locked by another run) and checks
that the tool skips or reports it in one line and goes on with the rest.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from test_scripts import PYTHON, SCRIPTS, _module, run_script

SUMMARIZE = [PYTHON, str(SCRIPTS / "summarize.py")]


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _summarize(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SUMMARIZE, str(root), *args], capture_output=True, text=True, timeout=60)


def _table(md: str) -> dict[str, list[str]]:
    return {line.split(" | ")[0][2:]: line.split(" | ") for line in md.splitlines() if line.startswith("| ")}


# ------------------------------------------------------------------------------------------- summarize
def test_summarize_skips_and_lists_bad_runs(tmp_path):
    root = tmp_path / "res"
    good = lambda acc: json.dumps({"eval_accuracy": acc})  # noqa: E731
    _write(root, "vilora/rank2/rte/seed1/all_results.json", good(0.80))
    _write(root, "vilora/rank2/rte/seed2/all_results.json", good(0.84))
    bad = {
        "vilora/rank2/rte/seed3": ('{"eval_accuracy": 0.', "not valid JSON"),  # truncated
        "vilora/rank2/rte/seed4": ("", "not valid JSON"),  # empty
        "vilora/rank2/rte/seed5": ("[]", "not a JSON object"),
        "vilora/rank2/rte/seed6": ('{"eval_accuracy": true}', "eval_accuracy is true, not a number"),
    }
    for rel, (text, _) in bad.items():
        _write(root, f"{rel}/all_results.json", text)
    # Outside the launcher's layout, placed by run_config.json: truncated, and a list.
    for rel, text in (("misc/a", '{"args": {"task_name": "rte"'), ("misc/b", "[]")):
        _write(root, f"{rel}/all_results.json", good(0.5))
        _write(root, f"{rel}/run_config.json", text)
        bad[rel] = (text, "run_config.json")

    res = _summarize(root)
    assert res.returncode == 0, res.stderr
    md = (root / "summary.md").read_text()
    assert _table(md)["vilora"][7] == "82.00±2.83 (2)"  # seeds 1 and 2 only; `true` is not 100
    assert "## Skipped runs" in md
    listed = md.split("## Skipped runs")[1]
    err = [line for line in res.stderr.splitlines() if line.startswith("summarize: skipping ")]
    assert len(err) == len(bad) == 6
    for rel, (_, reason) in bad.items():
        (line,) = [e for e in err if f"{rel}/" in e]
        assert reason in line, line
        (item,) = [x for x in listed.splitlines() if f"{rel}/" in x]
        assert reason in item, item


def test_summarize_reports_nan_as_nan(tmp_path):
    root = tmp_path / "res"
    # Constant predictions give an undefined Pearson; Python's json writes it as a bare NaN.
    for seed, pearson in ((1, math.nan), (2, math.nan), (3, 0.9)):
        _write(root, f"vilora_clr/rank2/stsb/seed{seed}/all_results.json", json.dumps({"eval_pearson": pearson}))
    _write(root, "vilora/rank2/sst2/seed1/all_results.json", json.dumps({"eval_accuracy": 0.9}))
    assert "NaN" in (root / "vilora_clr/rank2/stsb/seed1/all_results.json").read_text()

    res = _summarize(root)
    assert res.returncode == 0, res.stderr
    md = (root / "summary.md").read_text()
    row = _table(md)["vilora"]
    assert row[3] == "90.00 (1)"  # SST-2
    assert row[9] == "nan (3)"  # STS-B: the two NaN seeds are not dropped
    assert row[10] == "nan"  # and the GLUE average over a NaN task is NaN
    assert "## Runs with a NaN metric" in md
    assert md.count("vilora_clr/rank2/stsb/seed") == 2
    assert "NaN" in res.stderr
    rows = list(csv.DictReader(open(root / "summary.csv")))
    stsb = next(r for r in rows if r["method"] == "vilora" and r["task"] == "stsb")
    assert (stsb["mean"], stsb["std"], stsb["n"]) == ("nan", "nan", "3")
    assert next(r for r in rows if r["method"] == "vilora" and r["task"] == "avg")["mean"] == "nan"


def test_summarize_zero_padded_seed_is_the_same_seed(tmp_path):
    root = tmp_path / "res"
    _write(root, "vilora/rank2/rte/seed2/all_results.json", json.dumps({"eval_accuracy": 0.80}))
    _write(root, "vilora/rank2/rte/seed02/all_results.json", json.dumps({"eval_accuracy": 0.90}))
    _write(root, "vilora/rank2/rte/seed3/all_results.json", json.dumps({"eval_accuracy": 0.70}))
    summarize = _module("summarize")
    skipped: list[tuple[Path, str]] = []
    runs = summarize.find_runs(root, skipped)
    assert sorted(r.seed for r in runs) == ["2", "3"]
    ((path, reason),) = skipped
    assert path.parent.name in ("seed2", "seed02") and "seed 2" in reason
    kept = next(r for r in runs if r.seed == "2").path.name
    assert {kept, path.parent.name} == {"seed2", "seed02"}
    res = _summarize(root)
    assert res.returncode == 0 and _table(res.stdout)["vilora"][7].endswith(" (2)")
    assert f"{path.parent.name}/all_results.json" in res.stdout.split("## Skipped runs")[1]


def test_summarize_writes_atomically_and_replaces_a_symlink(tmp_path, monkeypatch):
    root = tmp_path / "res"
    _write(root, "vilora/rank2/rte/seed1/all_results.json", json.dumps({"eval_accuracy": 0.8}))
    target = _write(tmp_path, "elsewhere.md", "keep me\n")
    (root / "summary.md").symlink_to(target)
    summarize = _module("summarize")
    replaced = []
    real_replace = os.replace

    def replace(src, dst):
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert summarize.main([str(root)]) == 0
    assert sorted(dst.name for _, dst in replaced) == ["summary.csv", "summary.md"]
    assert all(src.parent == root and dst.parent == root for src, dst in replaced)
    assert target.read_text() == "keep me\n"  # not written through the link
    assert not (root / "summary.md").is_symlink() and "# GLUE dev results" in (root / "summary.md").read_text()
    assert sorted(p.name for p in root.iterdir()) == ["summary.csv", "summary.md", "vilora"]  # no temp files


# ----------------------------------------------------------------------------------------------- plots
def _log(root: Path, rel: str, lines: list[str], end: str = "\n") -> None:
    _write(root, f"{rel}/log.jsonl", "\n".join(lines) + end)


def test_plot_curves_skips_a_partial_last_line_and_warns_on_bad_lines(tmp_path, capsys):
    plot_curves = _module("plot_curves")
    ok = [json.dumps({"step": s, "eval_accuracy": v}) for s, v in ((10, 0.5), (20, 0.6))]
    # A running job: its last line is still being written (no newline, not parseable yet).
    _log(tmp_path, "adalora/rank2/rte/seed1", ok + ['{"step": 30, "eval_accu'], end="")
    # Bad lines in the middle: garbage, a JSON list, a boolean metric, a non-integer step, a boolean step.
    _log(tmp_path, "adalora/rank2/rte/seed2", [ok[0], "garbage{", "[]", '{"step": 15, "eval_accuracy": true}',
                                               '{"step": NaN, "eval_accuracy": 0.1}',
                                               '{"step": true, "eval_accuracy": 0.1}', ok[1]])
    # A complete last line whose newline is not written yet counts.
    _log(tmp_path, "adalora/rank2/rte/seed3", ok, end="")
    curves = plot_curves.collect(tmp_path)
    assert curves["rte"]["adalora r2"] == [{10: 50.0, 20: 60.0}] * 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "seed2/log.jsonl" in err[0] and "5 bad line(s)" in err[0] and "line 2)" in err[0], err
    assert plot_curves.main([str(tmp_path)]) == 0


# ------------------------------------------------------------------------------------------- launcher
# A training script that finishes every run, except where told: a run folder held by another process
# exits 75 with the training script's one-line message.
FAKE_TRAIN = """\
import json, os, sys
args = sys.argv[1:]
value = lambda name: args[args.index(name) + 1]
out = value("--output_dir")
open(os.environ["CALLS"], "a").write(out + "\\n")
if value("--task_name") in os.environ.get("BUSY_TASKS", "").split():
    print(f"run_glue: error: {out} is in use by another run (pid 4242)", file=sys.stderr)
    sys.exit(75)
if value("--task_name") in os.environ.get("FAIL_TASKS", "").split():
    sys.exit(3)
os.makedirs(out, exist_ok=True)
json.dump({"eval_accuracy": 0.5}, open(os.path.join(out, "all_results.json"), "w"))
"""


@pytest.fixture
def fake_train(tmp_path) -> tuple[Path, Path]:
    """(the fake training script, the file it appends each run's output dir to)."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    return script, tmp_path / "calls.txt"


def test_launch_goes_on_when_a_run_folder_cannot_be_created(tmp_path, fake_train):
    script, calls = fake_train
    root = tmp_path / "out"
    _write(root, "vilora_clr/rank2/rte", "a file where the launcher needs a folder\n")
    res = run_script("vilora_clr.sh", root, TASKS="rte cola", SEEDS="1", TRAIN_SCRIPT=str(script),
                     CALLS=str(calls))
    assert res.returncode == 1, res.stderr
    err = res.stderr.splitlines()
    assert err[-2] == "summary: 1 done, 1 failed, 0 skipped, of 2 runs"
    assert err[-1].startswith("  failed: vilora_clr/rank2/rte/seed1 (cannot create ")
    assert sum("FAILED" in line for line in err) == 1
    assert calls.read_text() == f"{root}/vilora_clr/rank2/cola/seed1\n"
    assert (root / "vilora_clr/rank2/cola/seed1/all_results.json").is_file()


@pytest.mark.parametrize("knobs,args", [
    ({"EXTRA_ARGS": "--project_prefix 'a\nrm -rf x'"}, ()),
    ({"MODEL": "/models/tiny\nrm -rf x"}, ()),
    ({}, ("--project_prefix", "a\nrm -rf x")),
], ids=["EXTRA_ARGS", "MODEL", "argument"])
def test_launch_rejects_a_newline_inside_a_word(tmp_path, fake_train, knobs, args):
    script, calls = fake_train
    for dry in ("1", "0"):
        res = run_script("vilora_clr.sh", tmp_path / "out", args, TASKS="rte", SEEDS="1 2", DRY_RUN=dry,
                         TRAIN_SCRIPT=str(script), CALLS=str(calls), **knobs)
        assert res.returncode == 2, res.stderr
        assert res.stdout == "" and res.stderr.count("\n") == 1 and "newline" in res.stderr, res.stderr
    assert not calls.exists() and not (tmp_path / "out").exists()


def test_launch_treats_newlines_between_words_as_spaces(tmp_path):
    res = run_script("vilora_clr.sh", tmp_path / "out", DRY_RUN="1", TASKS="rte\ncola", SEEDS="1\n2",
                     EXTRA_ARGS="--foo\nrm -rf x")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 4
    assert all(line.endswith(" --foo rm -rf x") for line in lines)
    # ACCELERATE_ARGS and SBATCH_ARGS: every line counts, not only the first.
    res = run_script("vilora_clr.sh", tmp_path / "out", DRY_RUN="1", TASKS="rte", SEEDS="1", LAUNCHER="sbatch",
                     NUM_PROCESSES="2", ACCELERATE="/opt/accelerate", SBATCH_ARGS="--mem=32G\n--cpus-per-task=4",
                     ACCELERATE_ARGS="--num_machines 2\n--machine_rank 1")
    assert res.returncode == 0, res.stderr
    (words,) = [shlex.split(line) for line in res.stdout.splitlines()]
    assert words[words.index("--wrap") - 2:words.index("--wrap")] == ["--mem=32G", "--cpus-per-task=4"]
    assert "--multi_gpu --num_machines 2 --machine_rank 1 " in words[words.index("--wrap") + 1]


def test_launch_counts_busy_runs_apart(tmp_path, fake_train):
    script, calls = fake_train
    root = tmp_path / "out"
    _write(root, "vilora_clr/rank2/mrpc/seed1/all_results.json", "{}")
    res = run_script("vilora_clr.sh", root, TASKS="rte cola mrpc", SEEDS="1 2", TRAIN_SCRIPT=str(script),
                     CALLS=str(calls), BUSY_TASKS="cola")
    assert res.returncode == 0, res.stderr  # busy is not a failure
    err = res.stderr.splitlines()
    assert err[-3] == "summary: 3 done, 0 failed, 1 skipped, 2 busy (held by another process), of 6 runs"
    assert err[-2:] == ["  busy: vilora_clr/rank2/cola/seed1", "  busy: vilora_clr/rank2/cola/seed2"]
    assert not (root / "vilora_clr/rank2/cola/seed1/all_results.json").exists()
    assert "in use by another run" in (root / "vilora_clr/rank2/cola/seed1/train.log").read_text()
    # Busy and failed: the failure sets the exit status.
    res = run_script("vilora_clr.sh", root, TASKS="cola stsb", SEEDS="1", TRAIN_SCRIPT=str(script),
                     CALLS=str(calls), BUSY_TASKS="cola", FAIL_TASKS="stsb")
    assert res.returncode == 1
    assert "summary: 0 done, 1 failed, 0 skipped, 1 busy (held by another process), of 2 runs" in res.stderr
