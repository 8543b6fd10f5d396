"""What the original script offered beyond training: pushing to the Hub (checked before training, not after) and
tokenizers without a pad token (GPT-2 style), which pad with their end-of-text token."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _run_glue_utils import make_tiny_model, read_results, write_tiny_glue

import run_glue_no_trainer as rg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return make_tiny_model(root / "model"), write_tiny_glue(root / "glue", "rte")


def _run(model, glue, out, *extra, task="rte"):
    return rg.main(["--model_name_or_path", str(model), "--task_name", task, "--glue_dir", str(glue),
                    "--output_dir", str(out), "--seed", "1", "--per_device_train_batch_size", "8",
                    "--max_train_steps", "2", "--learning_rate", "1e-3", *map(str, extra)])


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records what the script asks of the Hub."""
    calls: list = []
    fail_login = False

    def __init__(self, token=None):
        self.token = token

    def whoami(self):
        FakeHub.calls.append(("whoami", self.token))
        if FakeHub.fail_login:
            raise OSError("401 Client Error: Unauthorized\nmore detail")
        return {"name": "someone"}

    def create_repo(self, repo_id, exist_ok=False):
        FakeHub.calls.append(("create_repo", repo_id, exist_ok))

    def upload_folder(self, repo_id, folder_path, commit_message, ignore_patterns):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        FakeHub.calls.append(("upload_folder", repo_id, files, ignore_patterns))


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    FakeHub.calls, FakeHub.fail_login = [], False
    return FakeHub


def test_push_to_hub_logs_in_first_and_uploads_the_finished_run(tiny, tmp_path, hub):
    out = tmp_path / "my_run"
    assert _run(*tiny, out, "--push_to_hub", "--hub_token", "tok", "--checkpointing_steps", "1") == 0
    (who, create, upload) = hub.calls
    assert who == ("whoami", "tok") and create == ("create_repo", "someone/my_run", True)
    assert upload[1] == "someone/my_run" and "all_results.json" in upload[2] and "model.safetensors" in upload[2]
    assert "checkpoints/**" in upload[3]  # checkpoints stay local
    hub.calls.clear()
    assert _run(*tiny, tmp_path / "other", "--push_to_hub", "--hub_model_id", "org/name") == 0
    assert hub.calls[1] == ("create_repo", "org/name", True) and hub.calls[2][1] == "org/name"


def test_push_to_hub_fails_before_training_without_a_login(tiny, tmp_path, hub, capsys):
    hub.fail_login = True
    out = tmp_path / "run"
    assert _run(*tiny, out, "--push_to_hub") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("run_glue_no_trainer.py: error: --push_to_hub: cannot log in") and "Unauthorized" in err
    assert not out.exists()  # nothing trained, nothing written


def test_push_to_hub_offline_is_refused_up_front(tiny, tmp_path, hub, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _run(*tiny, tmp_path / "run", "--push_to_hub") == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err and hub.calls == [] and not (tmp_path / "run").exists()


def _tiny_gpt2(path: Path) -> Path:
    """A 1-layer GPT-2 whose tokenizer, like GPT-2's, has an end-of-text token but no pad token."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast
    from _run_glue_utils import WORDS
    vocab = {w: i for i, w in enumerate(["<unk>", "<|endoftext|>", *WORDS, ".", ","])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
    assert fast.pad_token is None
    fast.save_pretrained(path)
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                         eos_token_id=1, bos_token_id=1)).save_pretrained(path)
    return path


def test_a_tokenizer_without_pad_token_pads_with_eos(tiny, tmp_path):
    model = _tiny_gpt2(tmp_path / "gpt2")
    out = tmp_path / "out"
    assert _run(model, tiny[1], out) == 0  # batches of 8 sentences of different lengths
    assert read_results(out)["train_steps"] == 2
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == 1
    assert json.loads((out / "tokenizer_config.json").read_text())["pad_token"] == "<|endoftext|>"
