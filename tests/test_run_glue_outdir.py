"""run_glue_no_trainer.py and its output folder: what it refuses.

* An empty --output_dir, or one that is or goes through a file: one line, status 2.

In-process runs call main(argv) on a tiny DeBERTa-v2.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from _run_glue_utils import load_script, make_tiny_model, write_tiny_glue

rg = load_script()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("outdir")
    return make_tiny_model(root / "model"), write_tiny_glue(root / "glue", "rte")


def run_main(tiny, out, *extra, steps: int = 2) -> int:
    model, glue = tiny
    return rg.main(["--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir", str(glue),
                    "--output_dir", str(out), "--seed", "3", "--per_device_train_batch_size", "8",
                    "--learning_rate", "1e-3", "--max_train_steps", str(steps), *map(str, extra)])


def error_line(capsys) -> str:
    """The run's stderr, which must be exactly one error line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("run_glue_no_trainer.py: error: "), err
    return err[0]


# ------------------------------------------------------------------------------------------ the output path
def test_empty_output_dir_is_refused_and_the_current_directory_untouched(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for value in ("", "  "):
        assert run_main(tiny, value) == 2
        assert "--output_dir is empty" in error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_an_output_path_through_a_file_is_refused(tiny, tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    assert run_main(tiny, tmp_path / "f") == 2
    assert error_line(capsys).endswith(f"--output_dir {tmp_path / 'f'} exists and is not a directory")
    assert run_main(tiny, tmp_path / "f" / "run") == 2
    assert f"{tmp_path / 'f'} is in the way (not a directory)" in error_line(capsys)
    assert (tmp_path / "f").read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["f"]
