"""run_glue_no_trainer.py on hostile data: GLUE .tsv files and custom --train_file/--validation_file.

Every bad input must end the run with exit status 2, exactly one stderr line
`run_glue_no_trainer.py: error: ...` that names the file (and line, where there is one) and what would be
valid, and no output directory. Runs call the script's main(argv) in-process on a tiny DeBERTa-v2.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from _run_glue_utils import make_tiny_model, read_results, write_tiny_glue

import run_glue_no_trainer as rg
from glue_run import errors
from glue_run import data as glue_data
PREFIX = "run_glue_no_trainer.py: error: "


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def run(model: Path, out: Path, *argv: str) -> int:
    return rg.main(["--model_name_or_path", str(model), "--output_dir", str(out), "--seed", "0",
                    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", *argv])


def refused(capsys, model: Path, out: Path, *argv: str) -> str:
    """Run with bad input; check status 2, one stderr line with the script's prefix, no output dir; return it."""
    assert run(model, out, *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(PREFIX), err
    assert not out.exists(), "bad input must not write to output_dir"
    return err[0][len(PREFIX):]


# ------------------------------------------------------------------------------------------ GLUE .tsv files
def _rte(tmp_path: Path) -> tuple[Path, Path, list[bytes]]:
    glue = write_tiny_glue(tmp_path / "glue", "rte", n_train=10, n_dev=4)
    path = glue / "RTE" / "train.tsv"
    return glue, path, path.read_bytes().splitlines(keepends=True)


def test_glue_tsv_not_utf8_names_file_and_line(tiny_model, tmp_path, capsys):
    glue, path, lines = _rte(tmp_path)
    lines[4] = lines[4].replace(b"cat", b"c\xe9t") if b"cat" in lines[4] else lines[4].replace(b" .", b" \xe9.")
    path.write_bytes(b"".join(lines))  # Latin-1 e-acute: not UTF-8
    line = refused(capsys, tiny_model, tmp_path / "o", "--task_name", "rte", "--glue_dir", str(glue))
    assert line.startswith(f"{path}:5: ") and "not valid UTF-8" in line and "0xe9" in line


def test_glue_tsv_oversized_line_names_file_and_line(tiny_model, tmp_path, capsys):
    glue, path, lines = _rte(tmp_path)
    # One field just over csv's own field limit (128 KiB) and one over the 1 MiB line limit: both are refused.
    for size in (200_000, glue_data.MAX_TSV_LINE_BYTES + 1):
        big = lines[:2] + [b"7\t" + b"a" * size + b"\tthe cat .\tentailment\n"] + lines[2:]
        path.write_bytes(b"".join(big))
        if size > glue_data.MAX_TSV_LINE_BYTES:
            line = refused(capsys, tiny_model, tmp_path / "o", "--task_name", "rte", "--glue_dir", str(glue))
            assert line.startswith(f"{path}:3: ") and "1 MiB" in line
        else:  # under the line limit the row is read whole, as GLUE would be
            assert len(glue_data.read_glue_tsv(path, "rte")["sentence1"][1]) == size


def test_glue_tsv_without_line_breaks_is_not_read_whole(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"index\tsentence1\tsentence2\tlabel\n" + b"x" * (8 * glue_data.MAX_TSV_LINE_BYTES))
    with pytest.raises(errors.UsageError, match=r"train\.tsv:2: line longer than"):
        glue_data.read_glue_tsv(path, "rte")


def test_glue_tsv_reading_is_unchanged_on_crlf_and_bom(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t1\t2\t\"a b\tc d\r\n".encode())
    assert glue_data.read_glue_tsv(path, "mrpc") == {"sentence1": ['"a b'], "sentence2": ["c d"], "label": [1], "idx": [0]}


# ------------------------------------------------------------------------------------------ custom files
def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def write_pairs(path: Path, n: int, label=lambda i: ("yes", "no")[i % 2]) -> Path:
    """A csv file `sentence1,sentence2,label` of n rows whose label (label(i) for row i) follows good/bad."""
    return write_csv(path, "sentence1,sentence2,label",
                     [f"the {'good' if i % 2 == 0 else 'bad'} cat,a dog,{label(i)}" for i in range(n)])


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    """A good csv pair of training and validation files."""
    return write_pairs(tmp_path / "train.csv", 16), write_pairs(tmp_path / "dev.csv", 8)


def custom(train: Path, dev: Path, *argv: str) -> list[str]:
    return ["--train_file", str(train), "--validation_file", str(dev), "--max_train_steps", "1", *argv]


def test_glue_dir_and_custom_files_together_are_refused(tiny_model, tmp_path, files, capsys):
    glue = write_tiny_glue(tmp_path / "glue", "rte", n_train=10, n_dev=4)
    line = refused(capsys, tiny_model, tmp_path / "o", "--task_name", "rte", "--glue_dir", str(glue),
                   *custom(*files))
    assert "--glue_dir or --train_file/--validation_file, not both" in line


@pytest.mark.parametrize("name, content, expect", [
    ("dev.csv", b"", "is empty"),
    ("dev.jsonl", b"\n  \n", "is empty"),
    ("dev.csv", b"sentence1,sentence2,label\n", "has no data rows"),
    ("dev.jsonl", b'{"sentence1": "a", "label": 1}\n{"sentence1": "b", label: 0}\n', "cannot be read as json"),
    ("dev.json", b'[{"sentence1": "a", "label": 1},', "cannot be read as json"),
    ("dev.csv", b"sentence1,sentence2,label\na,b,yes\nc\xe9,d,no\n", ":3: byte 0xe9 at column 2 is not valid UTF-8"),
])
def test_unreadable_custom_file_is_one_line(tiny_model, tmp_path, files, capsys, name, content, expect):
    (tmp_path / name).write_bytes(content)
    line = refused(capsys, tiny_model, tmp_path / "o", *custom(files[0], tmp_path / name))
    assert expect in line and str(tmp_path / name) in line


@pytest.mark.parametrize("which", [0, 1])
def test_missing_label_column_is_refused(tiny_model, tmp_path, files, capsys, which):
    """No label column in either file: refused before the model loads, naming the file and the columns found."""
    bad = write_csv(files[which], "sentence1,sentence2,score", [f"a cat,a dog,{i / 10}" for i in range(8)])
    flag = ("--train_file", "--validation_file")[which]
    line = refused(capsys, tiny_model, tmp_path / "o", *custom(*files))
    assert line.startswith(f"{flag} {bad} has no 'label' column (columns: sentence1, sentence2, score)")


def test_missing_text_columns_list_the_columns_found(tiny_model, tmp_path, files, capsys):
    out = tmp_path / "o"
    ids = write_csv(tmp_path / "ids.csv", "id,label", [f"{i},{i % 2}" for i in range(8)])
    line = refused(capsys, tiny_model, out, *custom(ids, ids))
    assert line.startswith(f"--train_file {ids} has no text column (columns: id, label)")
    one = write_csv(tmp_path / "one.csv", "sentence1,label", [f"a cat,{i % 2}" for i in range(8)])
    line = refused(capsys, tiny_model, out, "--task_name", "rte", *custom(files[0], one))
    assert line.startswith(f"--validation_file {one} has no column 'sentence2' (columns: sentence1, label)")
    numbers = write_csv(tmp_path / "num.csv", "sentence1,sentence2,label", [f"{i},7,{i % 2}" for i in range(8)])
    line = refused(capsys, tiny_model, out, "--task_name", "rte", *custom(numbers, files[1]))
    assert "column 'sentence1' holds int64 values, not text" in line


def test_missing_values_are_refused_with_their_row(tiny_model, tmp_path, files, capsys):
    out = tmp_path / "o"
    # An empty label cell: pandas reads 0/1 with a gap as floats, which must not make a silent regression task.
    gap = write_pairs(tmp_path / "gap.csv", 6, lambda i: "" if i == 3 else i % 2)
    line = refused(capsys, tiny_model, out, *custom(gap, files[1]))
    assert line == f"--train_file {gap}: data row 4 has no label; every row needs one"
    null = tmp_path / "dev.jsonl"
    null.write_text('{"sentence1": "a", "sentence2": "b", "label": "yes"}\n'
                    '{"sentence1": "a", "sentence2": "b", "label": null}\n')
    assert "data row 2 has no label" in refused(capsys, tiny_model, out, *custom(files[0], null))
    text = write_csv(tmp_path / "text.csv", "sentence1,sentence2,label", ["a cat,,yes", "a dog,b,no"])
    line = refused(capsys, tiny_model, out, *custom(files[0], text))
    assert line.startswith(f"--validation_file {text}: data row 1 has no text in column 'sentence2'")


def test_label_kinds_must_agree(tiny_model, tmp_path, files, capsys):
    out = tmp_path / "o"
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"sentence1": "a", "sentence2": "b", "label": 1}\n'
                     '{"sentence1": "a", "sentence2": "b", "label": "yes"}\n')
    line = refused(capsys, tiny_model, out, *custom(files[0], mixed))
    assert line.startswith(f"--validation_file {mixed}: the label column mixes int and str values")
    ids = write_pairs(tmp_path / "ids.csv", 8, lambda i: i % 2)
    line = refused(capsys, tiny_model, out, *custom(ids, files[1]))
    assert "has text labels but --train_file" in line and "has integer labels" in line
    floats = write_pairs(tmp_path / "f.csv", 8, lambda i: f"{i % 2}.5")
    line = refused(capsys, tiny_model, out, *custom(ids, floats))
    assert line.startswith(f"--validation_file {floats}: label 0.5 is a decimal number")


def test_task_decides_regression_or_classes(tiny_model, tmp_path, files, capsys):
    out = tmp_path / "o"
    floats = write_pairs(tmp_path / "f.csv", 8, lambda i: f"{i % 2}.0")
    line = refused(capsys, tiny_model, out, "--task_name", "rte", *custom(floats, floats))
    assert line == (f"--train_file {floats}: label 0.0 is a decimal number, but rte is a classification task; "
                    "valid: entailment, not_entailment or 0-1")
    line = refused(capsys, tiny_model, out, "--task_name", "stsb", *custom(*files))
    assert line == f"--train_file {files[0]}: label 'yes' is not a number, but stsb is a regression task"
    inf = write_pairs(tmp_path / "inf.csv", 8, lambda i: "inf" if i else 1.5)
    assert "label inf is not a finite number" in refused(capsys, tiny_model, out, *custom(inf, inf))
    # Whole-number scores are still scores for stsb, not six classes of a classifier.
    scores = write_pairs(tmp_path / "s.csv", 16, lambda i: i % 6)
    assert run(tiny_model, out, "--task_name", "stsb", *custom(scores, scores)) == 0
    assert {"eval_pearson", "eval_spearmanr"} <= set(read_results(out))


def test_one_class_training_data_is_refused(tiny_model, tmp_path, files, capsys):
    same = write_pairs(tmp_path / "same.csv", 8, lambda i: "yes")
    line = refused(capsys, tiny_model, tmp_path / "o", *custom(same, files[1]))
    assert line == (f"--train_file {same}: every label is 'yes'; classification needs at least two classes in the "
                    "training data")
    ones = write_pairs(tmp_path / "ones.csv", 8, lambda i: "1")
    dev = write_pairs(tmp_path / "ids.csv", 8, lambda i: i % 2)
    line = refused(capsys, tiny_model, tmp_path / "o", "--task_name", "rte", *custom(ones, dev))
    assert line.startswith(f"--train_file {ones}: every label is 'not_entailment'")


def test_validation_label_unseen_in_training_is_a_warning(tiny_model, tmp_path, files, capsys):
    """Training still runs: a small sample may lack a rare class; the warning says those rows cannot be right."""
    dev = write_pairs(tmp_path / "dev3.csv", 8, lambda i: ("yes", "no", "maybe")[i % 3])
    out = tmp_path / "o"
    assert run(tiny_model, out, *custom(files[0], dev)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"run_glue_no_trainer.py: warning: label 'maybe' of --validation_file {dev} never occurs in "
                        f"--train_file {files[0]}; the model cannot learn it and those rows count as errors"]
    assert read_results(out)["train_steps"] == 1


def test_custom_files_of_two_formats_and_an_id_column(tiny_model, tmp_path):
    """A numeric id column is not taken for text, and each file is read in its own format."""
    train = write_csv(tmp_path / "train.csv", "id,sentence,label",
                      [f"{i},the {'good' if i % 2 else 'bad'} cat,{i % 2}" for i in range(16)])
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(f'{{"id": {i}, "sentence": "a {"good" if i % 2 else "bad"} dog", "label": {i % 2}}}\n'
                           for i in range(8)))
    args = rg.parse_args(["--model_name_or_path", "m", *custom(train, dev)])
    assert glue_data.text_columns(args, glue_data.load_glue(args)) == ("sentence", None)
    assert run(tiny_model, tmp_path / "o", *custom(train, dev)) == 0
    assert "eval_accuracy" in read_results(tmp_path / "o")
