"""Helpers for the run_glue_no_trainer.py tests: a tiny DeBERTa-v2 with a made-up WordPiece vocabulary and
tiny GLUE-layout data sets whose labels are learnable from one word."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


# ------------------------------------------------------------------------------------------ several processes
ACCELERATE = Path(sys.executable).parent / "accelerate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(**extra: str) -> dict:
    """The environment of a launched run: one thread, offline, and Python's faulthandler on, so that the SIGABRT
    sent to a run that hangs makes every process print its threads' stacks."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                PYTHONFAULTHANDLER="1", **extra)


def finish_processes(procs: list[subprocess.Popen], timeout: float) -> list[subprocess.CompletedProcess]:
    """Wait for every process (each started in its own session) and return their results; if they are not all
    done within `timeout` seconds in total, abort all of them (SIGABRT to each session) and fail the test with
    the stacks they print, which say where the run hung."""
    deadline, results = time.monotonic() + timeout, []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            break
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    else:
        return results
    stacks = []
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGABRT)
            except ProcessLookupError:
                pass
    for i, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        stacks.append(f"--- process {i} (status {p.returncode}), end of stdout:\n{(out or '')[-2000:]}\n"
                      f"--- stderr:\n{(err or '')[-12000:]}")
    pytest.fail(f"the run did not end within {timeout:.0f} s; what its processes printed:\n" + "\n".join(stacks))


def accelerate_launch(args: list[str], processes: int = 2, timeout: float = 150,
                      **env: str) -> subprocess.CompletedProcess:
    """The script under `accelerate launch` in `processes` CPU processes (gloo), as users start it."""
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(SCRIPT)]
    proc = subprocess.Popen(cmd + args, cwd=REPO, env=process_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    return finish_processes([proc], timeout)[0]


def spawn_ranks(args: list[str], processes: int = 2, timeout: float = 120, stdout=subprocess.PIPE,
                preexec_fn=None, script: Path = SCRIPT, **env: str) -> list[subprocess.CompletedProcess]:
    """Start the processes as torchrun would (env:// rendezvous) but without its agent, which stops the other
    processes once one exits: here each one's own exit status counts. `preexec_fn` runs in each before `script`."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script), *args], cwd=REPO, text=True, stdout=stdout,
                              stderr=subprocess.PIPE, start_new_session=True, preexec_fn=preexec_fn,
                              env=process_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(processes),
                                              RANK=str(r), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(processes), **env))
             for r in range(processes)]
    return finish_processes(procs, timeout)
