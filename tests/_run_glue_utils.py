"""Helpers for the run_glue_no_trainer.py tests: a tiny DeBERTa-v2 with a made-up WordPiece vocabulary and
tiny GLUE-layout data sets whose labels are learnable from one word."""
from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["good", "bad", "cat", "dog", "runs", "sits", "the", "a", "big", "small", "red", "blue", "house", "tree",
         "sees", "likes", "fast", "slow", "man", "woman", "car", "road", "happy", "sad"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_model(path: Path, dropout: float = 0.1, dtype: str = "float32") -> Path:
    """Save a randomly initialised 2-layer DeBERTa-v2 (hidden 32) and a BERT WordPiece tokenizer to `path`.

    `dtype="float16"` stores the weights in float16, as the Hub's microsoft/deberta-v3-base checkpoint is.
    """
    import torch
    from transformers import BertTokenizerFast, DebertaV2Config, DebertaV2Model

    path.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + WORDS + [".", ","]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(path)
    config = DebertaV2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=512, relative_attention=True,
                             pos_att_type=["c2p", "p2c"], position_buckets=16, max_relative_positions=32,
                             pad_token_id=0, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    model = DebertaV2Model(config).to(getattr(torch, dtype))
    model.save_pretrained(path)  # no head: every task gets a fresh classifier
    return path


def _sentence(rng: random.Random, key: str | None) -> str:
    words = rng.sample(WORDS[2:], 4)
    if key is not None:
        words.insert(rng.randrange(len(words)), key)
    return " ".join(words) + " ."


def write_tiny_glue(root: Path, task: str = "rte", n_train: int = 48, n_dev: int = 16, seed: int = 0) -> Path:
    """Write <root>/<TASK>/train.tsv and dev.tsv in the GLUE layout; the label follows the word good/bad."""
    rng = random.Random(seed)
    folder = {"rte": "RTE", "stsb": "STS-B", "mrpc": "MRPC", "cola": "CoLA", "sst2": "SST-2",
              "qnli": "QNLI", "wnli": "WNLI", "mnli": "MNLI", "qqp": "QQP"}[task]
    (root / folder).mkdir(parents=True, exist_ok=True)
    files = {"train.tsv": n_train, "dev.tsv": n_dev} if task != "mnli" else \
        {"train.tsv": n_train, "dev_matched.tsv": n_dev, "dev_mismatched.tsv": n_dev}
    for name, n in files.items():
        lines = []
        for i in range(n):
            y = i % 2
            s1 = _sentence(rng, "good" if y else "bad")
            s2 = _sentence(rng, None)
            if task == "rte" or task == "qnli":
                if i == 0:
                    lines.append(f"index\t{'question' if task == 'qnli' else 'sentence1'}\t"
                                 f"{'sentence' if task == 'qnli' else 'sentence2'}\tlabel")
                lines.append(f"{i}\t{s1}\t{s2}\t{'not_entailment' if y else 'entailment'}")
            elif task == "stsb":
                if i == 0:
                    lines.append("\t".join(["index", "genre", "filename", "year", "old_index", "source1",
                                             "source2", "sentence1", "sentence2", "score"]))
                score = 4.0 + rng.random() if y else rng.random()
                lines.append(f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{s1}\t{s2}\t{score:.3f}")
            elif task == "mrpc":
                if i == 0:
                    lines.append("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String")
                lines.append(f"{y}\t{i}\t{i + 1000}\t{s1}\t{s2}")
            elif task == "cola":
                lines.append(f"src\t{y}\t{'' if y else '*'}\t{s1}")
            elif task == "sst2":
                if i == 0:
                    lines.append("sentence\tlabel")
                lines.append(f"{s1}\t{y}")
            elif task == "mnli":
                if i == 0:
                    lines.append("\t".join(["index", "promptID", "pairID", "genre", "b1", "b2", "p1", "p2",
                                             "sentence1", "sentence2", "label1", "gold_label"]))
                lab = ["entailment", "neutral", "contradiction"][i % 3]
                lines.append(f"{i}\t0\t0\tfiction\tx\tx\tx\tx\t{s1}\t{s2}\t{lab}\t{lab}")
        (root / folder / name).write_text("\n".join(lines) + "\n")
    return root


def read_results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "run_glue_no_trainer.py"  # tests import it as `run_glue_no_trainer` (pytest.ini puts REPO on the path)


def import_bench(name: str):
    """Import bench/<name>.py by its name: bench/ is a folder of scripts, on the path only for this import."""
    import importlib
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "bench"))


def import_script(name: str):
    """Import scripts/<name>.py by its name. scripts/ stays on the path: its files import each other by bare name
    (plot_curves imports summarize, demo imports plot_ranks, short_horizon and sweep)."""
    import importlib
    import sys

    if str(REPO / "scripts") not in sys.path:
        sys.path.insert(0, str(REPO / "scripts"))
    return importlib.import_module(name)


def have_adapters() -> bool:
    """True once the team's peft (get_peft_model, VILoraConfig) and ivon (IVON) packages are importable."""
    try:
        import ivon
        import peft
        return all(hasattr(peft, n) for n in ("get_peft_model", "VILoraConfig", "LoraConfig")) and hasattr(ivon, "IVON")
    except ImportError:
        return False
