"""bench/grid_report.py: the grid's tables, paired comparisons and peer rows from finished runs' results."""
from __future__ import annotations

import json
import subprocess

import pytest

from _run_glue_utils import import_bench


def _run(root, method, task, seed, value, runtime=600.0):
    d = root / method / "rank2" / task / f"seed{seed}"
    d.mkdir(parents=True)
    key = {"mrpc": "eval_accuracy", "stsb": "eval_pearson", "rte": "eval_accuracy",
           "cola": "eval_matthews_correlation"}[task]
    (d / "all_results.json").write_text(json.dumps({key: value, "train_runtime_s": runtime}))


def test_tables_and_paired_differences(tmp_path, capsys):
    report = import_bench("grid_report")
    root = tmp_path / "grid"
    for seed, (vil, ada) in zip((2021, 2022, 2023), ((0.80, 0.78), (0.77, 0.79), (0.81, 0.76))):
        _run(root, "vilora_clr", "mrpc", seed, vil, runtime=1200)
        _run(root, "adalora_ivon_clr", "mrpc", seed, ada, runtime=1800)
    _run(root, "vilora_clr", "stsb", 2021, 0.86)  # no partner: no paired row for STS-B
    assert report.main([str(root)]) == 0
    text = capsys.readouterr().out
    assert "| VILoRA, SNR(\\|θ\\|) (`vilora_clr`) |  | 79.33 ± 2.08 (3) | 86.00 (1) |  |" in text
    assert "| AdaLoRA + IVON (sensitivity) (`adalora_ivon_clr`) |  | 77.67 ± 1.53 (3) |  |  |" in text
    # differences +2, -2, +5 points: mean 1.67, std 3.51, two wins of three
    assert "| posterior SNR(\\|θ\\|) − sensitivity, both IVON | MRPC acc | 1.67 ± 3.51 (3) | 2 / 3 |" in text
    assert "STS-B Pearson | " not in text.split("Paired by seed")[1].split("Train time")[0]
    assert "| `vilora_clr` |  | 20 | 10 |  |" in text and "| `adalora_ivon_clr` |  | 30 |  |  |" in text
    assert "| VILoRA / AdaLoRA + IVON | MRPC acc | 0.667, 0.667, 0.667 | 0.667 |" in text
    assert "VILoRA / AdaLoRA + AdamW" not in text  # no AdamW runs: no such ratio


def test_train_time_ratio_paired_by_seed(tmp_path, capsys):
    report = import_bench("grid_report")
    root = tmp_path / "grid"
    for seed, (vil, ada) in zip((2021, 2022), ((1000, 800), (900, 1000))):
        _run(root, "vilora_clr", "stsb", seed, 0.86, runtime=vil)
        _run(root, "adalora", "stsb", seed, 0.85, runtime=ada)
    _run(root, "adalora", "stsb", 2023, 0.85, runtime=5000)  # no VILoRA partner: not in the ratio
    assert report.main([str(root)]) == 0
    text = capsys.readouterr().out
    assert "| VILoRA / AdaLoRA + AdamW | STS-B Pearson | 1.250, 0.900 | 1.075 |" in text


def test_peer_rows_beside_ours_and_majority_class(tmp_path, capsys, glue_dir):
    report = import_bench("grid_report")
    ours, peer = tmp_path / "ours", tmp_path / "peer"
    _run(ours, "lora_all", "mrpc", 2021, 0.8125)
    _run(peer, "lora_all", "mrpc", 2021, 0.80)
    _run(peer, "adalora", "mrpc", 2021, 0.75)
    assert report.main([str(ours), "--peer", str(peer), "--glue_dir", str(glue_dir)]) == 0
    text = capsys.readouterr().out
    assert "| `lora_all` | MRPC acc | 2021 | 81.25 | 80.00 |" in text
    assert "| `adalora` | MRPC acc | 2021 | not run | 75.00 |" in text
    assert "| majority class | 52.71 | 68.38 | 0 (constant) | 0 (constant) |" in text


def test_a_missing_folder_is_one_line_and_status_2(tmp_path, capsys):
    report = import_bench("grid_report")
    assert report.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a folder" in err


def test_a_folder_without_finished_runs_is_one_line_and_status_2(tmp_path, capsys):
    """An empty folder, or a --peer folder that holds no run (a wrong path), is said, not printed as empty tables."""
    report = import_bench("grid_report")
    (tmp_path / "empty").mkdir()
    _run(tmp_path / "grid", "lora_all", "mrpc", 2021, 0.8)
    for argv in ([str(tmp_path / "empty")], [str(tmp_path / "grid"), "--peer", str(tmp_path / "empty")]):
        assert report.main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert f"no finished rank-2 runs (all_results.json) under {tmp_path / 'empty'}" in captured.err


def test_rank_patterns_compared_triplet_by_triplet(tmp_path, capsys):
    report = import_bench("grid_report")
    root = tmp_path / "grid"
    a, b = {"m1": [True, False], "m2": [True, True]}, {"m1": [True, True], "m2": [True, False]}
    for seed, (pa, pb) in zip((2021, 2022), ((a, b), (a, a))):
        for method, pattern in (("vilora_clr", pa), ("adalora_ivon_clr", pb)):
            _run(root, method, "mrpc", seed, 0.8)
            (root / method / "rank2" / "mrpc" / f"seed{seed}" / "rank_pattern.json").write_text(json.dumps(pattern))
    _run(root, "vilora_clr_criterion-mean", "mrpc", 2021, 0.8)  # no rank pattern: no row
    _run(root, "vilora_clr_criterion-sigma", "mrpc", 2021, 0.8)
    assert report.main([str(root)]) == 0
    text = capsys.readouterr().out
    # seed 2021: m1 agrees on its first triplet, m2 on its first: 2 of 4; seed 2022 identical: 4 of 4.
    # Three of four kept in each: random patterns share (3*3 + 1*1) / 4 = 2.5 on average.
    assert "| `vilora_clr` | `adalora_ivon_clr` | MRPC acc | 2, 4 of 4 | 2.5, 2.5 |" in text
    assert "`vilora_clr_criterion-mean` | `vilora_clr_criterion-sigma`" not in text


def test_a_run_without_a_train_time_is_reported_but_not_timed(tmp_path, capsys):
    """An all_results.json without train_runtime_s (or with a non-number) keeps its metric row and drops out of
    the time tables, instead of stopping the report."""
    report = import_bench("grid_report")
    root = tmp_path / "grid"
    _run(root, "vilora_clr", "mrpc", 2021, 0.80, runtime=1200)
    _run(root, "adalora_ivon_clr", "mrpc", 2021, 0.78, runtime=None)
    _run(root, "vilora_clr", "mrpc", 2022, 0.79, runtime=1800)
    _run(root, "adalora_ivon_clr", "mrpc", 2022, 0.77, runtime=900)
    assert report.main([str(root)]) == 0
    text = capsys.readouterr().out
    assert "| AdaLoRA + IVON (sensitivity) (`adalora_ivon_clr`) |  | 77.50 ± 0.71 (2) |  |  |" in text
    assert "| `adalora_ivon_clr` |  | 15 |  |  |" in text and "| `vilora_clr` |  | 25 |  |  |" in text
    assert "| VILoRA / AdaLoRA + IVON | MRPC acc | 2.000 | 2.000 |" in text  # seed 2022 only


def test_where_each_run_came_from(tmp_path, capsys):
    """Runs are grouped by the commit their run_config.json names, oldest start first; runs whose commits hold the
    same training code share a letter; a commit git does not know is '?', a run without a config 'not recorded'."""
    report = import_bench("grid_report")
    head = subprocess.run(["git", "-C", str(report.REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    head = head.stdout.strip()
    root = tmp_path / "grid"
    for method, task, seed, commit, start in (
            ("vilora_clr", "stsb", 2022, head, "2026-12-02T09:00:00Z"),
            ("vilora_clr", "mrpc", 2022, head, "2026-12-02T10:00:00Z"),
            ("adalora", "mrpc", 2021, "HEAD", "2026-12-01T08:30:00Z"),  # the same commit spelled otherwise
            ("lora_all", "cola", 2021, "0" * 40, "2026-12-03T00:00:00Z")):
        _run(root, method, task, seed, 0.5)
        (root / method / "rank2" / task / f"seed{seed}" / "run_config.json").write_text(
            json.dumps({"git_commit": commit, "start_time": start}))
    _run(root, "adalora_ivon_clr", "mrpc", 2021, 0.5)  # no run_config.json
    assert report.main([str(root)]) == 0
    rows = capsys.readouterr().out.split("| commit | started | code | runs (task, seed) |\n|---|---|---|---|\n")[1]
    assert rows.splitlines()[:4] == [
        "| not recorded |  | ? | `adalora_ivon_clr` MRPC 2021 |",
        "| HEAD | 2026-12-01 08:30 | A | `adalora` MRPC 2021 |",
        f"| {head[:7]} | 2026-12-02 09:00 | A | `vilora_clr` MRPC 2022, STS-B 2022 |",
        "| 0000000 | 2026-12-03 00:00 | ? | `lora_all` CoLA 2021 |",
    ]


def test_a_time_ratio_across_machines_is_marked_and_left_out_of_the_mean(tmp_path, capsys):
    """Runs timed on different machines (different boot ids in run_config.json) do not make a ratio; runs that do
    not record a machine are taken as they are."""
    report = import_bench("grid_report")
    root = tmp_path / "grid"
    for seed, (vil, ada), boots in ((2021, (1000, 800), ("a", "a")), (2022, (900, 450), ("a", "b")),
                                    (2023, (600, 600), None)):
        for method, runtime, boot in (("vilora_clr", vil, boots and boots[0]), ("adalora", ada, boots and boots[1])):
            _run(root, method, "mrpc", seed, 0.8, runtime=runtime)
            if boot:
                (root / method / "rank2" / "mrpc" / f"seed{seed}" / "run_config.json").write_text(
                    json.dumps({"machine": {"boot_id": boot}}))
    assert report.main([str(root)]) == 0
    text = capsys.readouterr().out
    assert "| VILoRA / AdaLoRA + AdamW | MRPC acc | 1.250, 2.000†, 1.000 | 1.125 |" in text


def test_a_run_config_that_is_not_an_object_counts_as_not_recorded(tmp_path, capsys):
    report = import_bench("grid_report")
    root = tmp_path / "grid"
    for method in ("vilora_clr", "adalora"):
        _run(root, method, "mrpc", 2021, 0.8)
        (root / method / "rank2" / "mrpc" / "seed2021" / "run_config.json").write_text("[1, 2]")
    assert report.main([str(root)]) == 0
    text = capsys.readouterr().out
    assert "| not recorded |  | ? | `adalora` MRPC 2021; `vilora_clr` MRPC 2021 |" in text
    assert "| VILoRA / AdaLoRA + AdamW | MRPC acc | 1.000 | 1.000 |" in text
