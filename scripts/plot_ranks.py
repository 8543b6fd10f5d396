"""Heatmap of the final rank of every adapted matrix of an AdaLoRA/VILoRA run.

    python scripts/plot_ranks.py RUN_DIR [-o out.png]

Reads RUN_DIR/rank_pattern.json (else the ``rank_pattern`` of RUN_DIR/adapter_config.json): module path ->
keep mask over the ``init_r`` triplets, e.g. ``deberta.encoder.layer.3.attention.self.query_proj.lora_E`` (keys
read by ``peft.rank_pattern``; one that names no ``lora_E`` is an error).
The kept rank is the number of True entries. Rows are encoder layers (the index in the module path), columns
the weight matrices as in the AdaLoRA paper's rank-distribution figure (W_q, W_k, W_v, W_o, W_f1, W_f2);
adapted matrices outside the layers (DeBERTa's pooler) get cells beside the grid. Names of DeBERTa-v2 and
BERT/RoBERTa modules are recognised; any other module inside a layer is added to an "other" column.
Writes RUN_DIR/rank_pattern.png unless -o is given.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from peft.rank_pattern import MODEL_PREFIX, pattern_module_path  # noqa: E402  peft's one reading of pattern keys

COLUMNS = ["query", "key", "value", "attention-output", "intermediate", "output"]
COLUMN_LABELS = {"query": "query\n$W_q$", "key": "key\n$W_k$", "value": "value\n$W_v$",
                 "attention-output": "attention\noutput $W_o$", "intermediate": "intermediate\n$W_{f_1}$",
                 "output": "output\n$W_{f_2}$", "other": "other"}
# Module path inside a layer (matched in full) -> column; DeBERTa-v2 names, and BERT/RoBERTa names.
MODULE_COLUMNS = [
    (re.compile(r"attention\.self\.(query_proj|query)"), "query"),
    (re.compile(r"attention\.self\.(key_proj|key)"), "key"),
    (re.compile(r"attention\.self\.(value_proj|value)"), "value"),
    (re.compile(r"attention\.output\.dense"), "attention-output"),
    (re.compile(r"intermediate\.dense"), "intermediate"),
    (re.compile(r"output\.dense"), "output"),
]
LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.(.+)$")


def load_rank_pattern(run_dir: Path) -> tuple[dict[str, int], int | None]:
    """(module path -> kept rank, init_r or None) from rank_pattern.json or adapter_config.json."""
    config_path = run_dir / "adapter_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    pattern_path = run_dir / "rank_pattern.json"
    pattern = json.loads(pattern_path.read_text()) if pattern_path.is_file() else config.get("rank_pattern")
    if not pattern:
        raise ValueError(f"{run_dir} has no rank_pattern.json and no rank_pattern in adapter_config.json "
                         "(only AdaLoRA/VILoRA runs have one)")
    ranks = {}
    for name, value in pattern.items():
        module = pattern_module_path(name.removeprefix(MODEL_PREFIX), "default")
        ranks[module] = sum(bool(v) for v in value) if isinstance(value, list) else int(value)
    init_r = config.get("init_r")
    if init_r is None:
        lengths = [len(v) for v in pattern.values() if isinstance(v, list)]
        init_r = max(lengths) if lengths else None
    return ranks, init_r


def rank_grid(ranks: dict[str, int]) -> tuple[np.ndarray, list[int], list[str], dict[str, int]]:
    """Arrange ranks as (grid [layers, columns] with NaN where nothing is adapted, layer indices, column
    names, ranks of modules outside the layers). Several unknown modules of one layer add up in "other"."""
    cells: dict[tuple[int, str], int] = {}
    outside: dict[str, int] = {}
    for module, r in ranks.items():
        m = LAYER.search(module)
        if m is None:
            short = "pooler" if module.endswith("pooler.dense") else module
            outside[short] = outside.get(short, 0) + r
            continue
        layer, rest = int(m.group(1)), m.group(2)
        column = next((c for pattern, c in MODULE_COLUMNS if pattern.fullmatch(rest)), "other")
        cells[(layer, column)] = cells.get((layer, column), 0) + r
    layers = sorted({layer for layer, _ in cells})
    columns = COLUMNS + (["other"] if any(c == "other" for _, c in cells) else [])
    grid = np.full((len(layers), len(columns)), np.nan)
    for (layer, column), r in cells.items():
        grid[layers.index(layer), columns.index(column)] = r
    return grid, layers, columns, outside


def _annotate(ax, grid: np.ndarray, vmax: float) -> None:
    for (i, j), v in np.ndenumerate(grid):
        if not math.isnan(v):
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=10,
                    color="white" if v > 0.6 * vmax else "black")


def plot_ranks(run_dir: Path, out: Path) -> Path:
    """Draw the heatmap of ``run_dir``'s final ranks into ``out`` (PNG) and return ``out``."""
    ranks, init_r = load_rank_pattern(run_dir)
    grid, layers, columns, outside = rank_grid(ranks)
    top = int(init_r or max(ranks.values()) or 1)
    # One colour per possible rank 0..top, so that equal numbers look equal.
    cmap = plt.get_cmap("YlGnBu", top + 1).with_extremes(bad="#eeeeee")  # grey: matrices not adapted
    norm = dict(cmap=cmap, vmin=-0.5, vmax=top + 0.5)

    n_rows = max(len(layers), 1)
    fig, ax = plt.subplots(figsize=(1.25 * len(columns) + (2.4 if outside else 1.0), 0.42 * n_rows + 2.6),
                           layout="constrained")  # keeps the colour bar clear of the tick labels
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", **norm)
    _annotate(ax, grid, top)
    ax.set_xticks(range(len(columns)), [COLUMN_LABELS[c] for c in columns], fontsize=9)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_ylabel("encoder layer (index in module path)")
    if outside:
        # Cells of the same height as the grid's, beside its top rows.
        names = sorted(outside, key=lambda n: (n != "pooler", n))
        k = min(len(names), n_rows)
        side = ax.inset_axes([1.04, 1 - k / n_rows, 1 / len(columns), k / n_rows])
        column = np.array([[outside[n]] for n in names], dtype=float)
        side.imshow(column, aspect="auto", **norm)
        _annotate(side, column, top)
        side.set_xticks([])
        side.set_yticks(range(len(names)), names)
        side.yaxis.tick_right()
        side.set_title("outside\nlayers", fontsize=9)
    bar = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.04, ticks=range(top + 1))
    bar.set_label("final rank" + (f" (of init_r = {init_r}); grey: not adapted" if init_r else ""))
    total = sum(ranks.values())
    name = "/".join(p for p in run_dir.resolve().parts[-4:] if p != "/")
    ax.set_title(f"Final rank per adapted matrix: {name}\n"
                 f"total {total} over {len(ranks)} matrices (mean {total / len(ranks):.2f})", fontsize=11)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: RUN_DIR [-o out.png]."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, help="PNG to write (default RUN_DIR/rank_pattern.png)")
    a = p.parse_args(argv)
    try:
        out = plot_ranks(a.run_dir, a.output or a.run_dir / "rank_pattern.png")
    except (ValueError, OSError) as e:
        print(f"plot_ranks: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
