"""Copy the small results of finished runs into the repository, so that tables survive the machine.

    python bench/collect_results.py OUTPUT_ROOT bench/results/NAME

For every finished run below OUTPUT_ROOT (one with all_results.json), copies into the same relative folder
below the destination: all_results.json, run_config.json, rank_pattern.json (AdaLoRA/VILoRA) and log.jsonl
cut to its evaluation lines and IVON statistics lines (every 100 updates), which is what
scripts/summarize.py, scripts/plot_curves.py and bench/ivon_horizon.py's tables read; the weights and
checkpoints stay behind. Runs already collected are copied again (they may have been re-run). Unfinished
runs are listed and skipped.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from glue_run.files import write_atomic  # noqa: E402  the training script's one atomic writer

SMALL_FILES = ("all_results.json", "run_config.json", "rank_pattern.json")


def _kept(line: str) -> bool:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and any(k.startswith(("eval_", "post_", "epoch_train_loss")) for k in record)


def collect(root: Path, dest: Path) -> tuple[list[Path], list[Path]]:
    """Copy every finished run; returns (collected, unfinished) run folders."""
    done, unfinished = [], []
    for results in sorted(root.rglob("all_results.json")):
        run = results.parent
        target = dest / run.relative_to(root)
        target.mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES:
            if (run / name).is_file():
                shutil.copyfile(run / name, target / name)
        if (run / "log.jsonl").is_file():
            lines = (run / "log.jsonl").read_text().splitlines(keepends=True)
            write_atomic(target / "log.jsonl", "".join(line for line in lines if _kept(line)))
        done.append(run)
    for log in sorted(root.rglob("log.jsonl")):
        if not (log.parent / "all_results.json").exists():
            unfinished.append(log.parent)
    return done, unfinished


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not Path(args[0]).is_dir():
        print("usage: python bench/collect_results.py OUTPUT_ROOT DEST (OUTPUT_ROOT: a folder of runs)",
              file=sys.stderr)
        return 2
    done, unfinished = collect(Path(args[0]), Path(args[1]))
    print(f"collected {len(done)} finished runs into {args[1]}")
    for run in unfinished:
        print(f"  not finished, skipped: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
