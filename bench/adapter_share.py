"""How much of an adapter run's dev metric its low-rank updates carry: the saved adapter evaluated as trained, and
again with every low-rank update removed while the trained classifier head is kept.

    python bench/adapter_share.py RUN_DIR [RUN_DIR ...] [--glue_dir ../shared/glue]

RUN_DIR is a finished LoRA, AdaLoRA or VILoRA run of run_glue_no_trainer.py (adapter_model.safetensors,
adapter_config.json, run_config.json). "Head only" is the same adapter with lora_E (AdaLoRA, VILoRA) or lora_B
(LoRA) set to zero, so every adapted matrix is its pretrained self and only the head trained with it remains.
Both evaluations are the training script's own (`--eval_only --lora_path`, the run's task, model, max_length and
seed), one process each. If head only scores as the run does, the adapters (and so the choice of which ranks to
keep) do not decide the metric, and a comparison of importance scores on that run cannot separate them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from glue_run.data import PRIMARY_METRIC  # noqa: E402  the training script's primary metric per task

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _evaluate(run_args: dict, adapter: Path, glue_dir: str | None, out: Path) -> float:
    cmd = [sys.executable, str(REPO / "run_glue_no_trainer.py"), "--task_name", run_args["task_name"],
           "--model_name_or_path", run_args["model_name_or_path"], "--max_length", str(run_args["max_length"]),
           "--apply_lora", "--lora_type", run_args["lora_type"], "--lora_path", str(adapter), "--eval_only",
           "--seed", str(run_args["seed"]), "--output_dir", str(out)]
    if glue_dir:
        cmd += ["--glue_dir", glue_dir]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise SystemExit(f"adapter_share: evaluating {adapter} failed (exit {done.returncode}): {tail[0]}")
    results = json.loads((out / "all_results.json").read_text())
    return 100 * results["eval_" + PRIMARY_METRIC.get(run_args["task_name"], "accuracy")]


def head_only(adapter: Path, dest: Path) -> int:
    """Copy the adapter into dest with its low-rank updates zeroed; the number of tensors zeroed."""
    from safetensors.torch import load_file, save_file

    for name in ADAPTER_FILES:
        shutil.copy2(adapter / name, dest / name)
    tensors = load_file(str(dest / "adapter_model.safetensors"))
    lora_type = json.loads((adapter / "adapter_config.json").read_text()).get("peft_type", "").lower()
    suffix = ".lora_B.weight" if lora_type == "lora" else ".lora_E"
    zeroed = [k for k in tensors if k.endswith(suffix)]
    for k in zeroed:
        tensors[k] = tensors[k].new_zeros(tensors[k].shape)
    save_file(tensors, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
    return len(zeroed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR"))
    args = p.parse_args(argv)
    configs = {}
    for run in args.runs:  # every input checked before anything is evaluated
        missing = [n for n in (*ADAPTER_FILES, "run_config.json") if not (run / n).is_file()]
        if missing:
            print(f"adapter_share: {run} is not a finished adapter run (missing {', '.join(missing)})", file=sys.stderr)
            return 2
        try:
            top = json.loads((run / "run_config.json").read_text())
            configs[run] = top["args"] | {"seed": top["seed"]}
            missing = [k for k in ("task_name", "model_name_or_path", "max_length", "lora_type") if k not in top["args"]]
        except (ValueError, KeyError, TypeError) as e:
            missing = [f"a readable run_config.json ({type(e).__name__}: {e})"]
        if missing:
            print(f"adapter_share: {run}/run_config.json lacks {', '.join(missing)}", file=sys.stderr)
            return 2
        if not configs[run].get("apply_lora"):
            print(f"adapter_share: {run} is a full fine-tuning run; it has no adapters", file=sys.stderr)
            return 2
    print("| run | task | as trained | head only (low-rank updates removed) |\n|---|---|---|---|")
    for run, cfg in configs.items():
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "zero").mkdir()
            n = head_only(run, tmp / "zero")
            trained = _evaluate(cfg, run, args.glue_dir, tmp / "eval_trained")
            head = _evaluate(cfg, tmp / "zero", args.glue_dir, tmp / "eval_head")
        print(f"| {run} | {cfg['task_name']} | {trained:.2f} | {head:.2f} ({n} matrices zeroed) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
