"""bench/collect_results.py keeps the small results of finished runs (metrics, config, curve), nothing else."""
from __future__ import annotations

import json

from _run_glue_utils import import_bench


def test_collects_finished_runs_with_their_curves_only(tmp_path):
    mod = import_bench("collect_results")
    root, dest = tmp_path / "outputs", tmp_path / "results"
    done = root / "vilora_clr" / "rank2" / "mrpc" / "seed2021"
    (done / "checkpoints" / "step_3").mkdir(parents=True)
    lines = [{"step": 1, "train_loss": 0.7, "lr": 0.1}, {"step": 2, "eval_accuracy": 0.7},
             {"step": 2, "train_loss": 0.6, "post_sigma_median": 0.01}, {"step": 2, "epoch": 1, "epoch_train_loss": 0.6}]
    (done / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3, "tr')
    for name in ("all_results.json", "run_config.json", "rank_pattern.json"):
        (done / name).write_text("{}")
    (done / "adapter_model.safetensors").write_bytes(b"weights")
    running = root / "adalora" / "rank2" / "mrpc" / "seed2021"
    running.mkdir(parents=True)
    (running / "log.jsonl").write_text("{}\n")
    assert mod.main([str(root), str(dest)]) == 0
    got = dest / "vilora_clr" / "rank2" / "mrpc" / "seed2021"
    assert sorted(p.name for p in got.iterdir()) == ["all_results.json", "log.jsonl", "rank_pattern.json",
                                                      "run_config.json"]
    assert [json.loads(line) for line in (got / "log.jsonl").read_text().splitlines()] == lines[1:]
    assert not (dest / "adalora").exists()  # unfinished: skipped
