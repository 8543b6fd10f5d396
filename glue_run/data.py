"""GLUE and custom data for the training script: reading, checking, label ids and tokenising.

GLUE comes from a local copy in the standard download layout (`read_glue_tsv`, into exactly the Hub's schema
and label ids) or from the Hub; custom csv/json files (--train_file/--validation_file) are checked column by
column and their labels mapped by `label_setup`. Every problem with the data is one line naming the file (and
line or row): a `UsageError`.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import datasets

from .errors import UsageError, warn

HUB_DATASET = "nyu-mll/glue"

TASK_TO_KEYS = {
    "cola": ("sentence", None),
    "mnli": ("premise", "hypothesis"),
    "mrpc": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "sst2": ("sentence", None),
    "stsb": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
TASKS = tuple(TASK_TO_KEYS)
# Class names in the order of the Hub's ClassLabel ids; stsb is a regression task (float label).
LABEL_NAMES = {
    "cola": ["unacceptable", "acceptable"],
    "mnli": ["entailment", "neutral", "contradiction"],
    "mrpc": ["not_equivalent", "equivalent"],
    "qnli": ["entailment", "not_entailment"],
    "qqp": ["not_duplicate", "duplicate"],
    "rte": ["entailment", "not_entailment"],
    "sst2": ["negative", "positive"],
    "stsb": None,
    "wnli": ["not_entailment", "entailment"],
}
PRIMARY_METRIC = {"cola": "matthews_correlation", "stsb": "pearson"}  # every other task: accuracy


# Local GLUE copy (the standard GLUE download layout): folder, header row?, {hub column: file column},
# label column (-1 = last, because MNLI train and dev differ in width), and how the file spells the label.
GLUE_FOLDER = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
               "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
GLUE_TSV = {
    "cola": (False, {"sentence": 3}, 1),
    "sst2": (True, {"sentence": 0}, 1),
    "mrpc": (True, {"sentence1": 3, "sentence2": 4}, 0),
    "stsb": (True, {"sentence1": 7, "sentence2": 8}, 9),
    "qqp": (True, {"question1": 3, "question2": 4}, 5),
    "mnli": (True, {"premise": 8, "hypothesis": 9}, -1),
    "qnli": (True, {"question": 1, "sentence": 2}, 3),
    "rte": (True, {"sentence1": 1, "sentence2": 2}, 3),
    "wnli": (True, {"sentence1": 1, "sentence2": 2}, 3),
}
GLUE_SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv",
                    "validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"}


# One GLUE row is a sentence or two (the longest line of the GLUE download is under 2 KB): a longer line is not
# GLUE data, and stopping there keeps a file without line breaks from being read into memory whole.
MAX_TSV_LINE_BYTES = 1 << 20


def _utf8_lines(path: Path, max_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """Yield (line number from 1, text without its line break) of a UTF-8 file; a leading BOM is dropped.

    Raises UsageError naming file and line for bytes that are not UTF-8 and, with `max_bytes`, for a line
    longer than that (read no further than the limit).
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    with f:
        for line_no in range(1, sys.maxsize):
            line = f.readline(max_bytes + 2) if max_bytes else f.readline()  # + 2: room for "\r\n"
            if not line:
                return
            line = line.rstrip(b"\r\n")
            if max_bytes and len(line) > max_bytes:
                raise UsageError(f"{path}:{line_no}: line longer than {max_bytes // 2**20} MiB; one row of a GLUE "
                                 "file is a sentence or two")
            try:
                yield line_no, line.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise UsageError(f"{path}:{line_no}: byte 0x{line[e.start]:02x} at column {e.start + 1} is not "
                                 "valid UTF-8; the file must be UTF-8 text") from None


def class_ids(classes) -> dict:
    """Each class (a name, or a label value found in the data) to its id: its position in `classes`."""
    return {c: i for i, c in enumerate(classes)}


def label_to_id(names: list[str]) -> dict:
    """Every way a data file spells a class of `names`: its name, its id, and its id as text (files of
    rte, qnli and mnli name classes, the others give ids)."""
    ids = range(len(names))
    return class_ids(names) | class_ids(ids) | class_ids(map(str, ids))


def read_glue_tsv(path: Path, task: str) -> dict[str, list]:
    """Read one GLUE .tsv file into columns of the Hub schema (text columns, ``label``, ``idx``).

    A row is one line split at tabs, with no quoting (GLUE text contains unbalanced quotes). Lines must be
    UTF-8 (the BOM that MRPC's header carries is dropped) and at most MAX_TSV_LINE_BYTES (1 MiB) long. Labels
    are mapped to the Hub's ClassLabel ids. Any malformed line raises UsageError naming the file and line.
    """
    has_header, text_cols, label_col = GLUE_TSV[task]
    names = LABEL_NAMES[task]
    # Files spell classes either by name (rte, qnli, mnli) or by id (0/1); both map to the Hub's id.
    to_id = label_to_id(names) if names else None
    if not path.is_file():
        raise UsageError(f"GLUE file not found: {path} (expected the GLUE layout <glue_dir>/{GLUE_FOLDER[task]}/"
                         f"{path.name})")
    columns: dict[str, list] = {c: [] for c in text_cols} | {"label": [], "idx": []}
    width = None
    for line_no, text in _utf8_lines(path, MAX_TSV_LINE_BYTES):
        row = text.split("\t") if text else []
        if has_header and line_no == 1:
            width = len(row)
            continue
        if width is None:
            width = max(max(text_cols.values()), label_col) + 1
        if len(row) != width:
            raise UsageError(f"{path}:{line_no}: expected {width} tab-separated columns, found {len(row)}")
        raw = row[label_col].strip()
        if to_id is None:
            try:
                label = float(raw)
            except ValueError:
                label = math.nan
            if not 0.0 <= label <= 5.0:  # also rejects NaN
                raise UsageError(f"{path}:{line_no}: label {raw!r} is not an stsb score (a number from 0 to 5)")
        elif raw in to_id:
            label = to_id[raw]
        else:
            valid = ", ".join(names) if not raw.isdigit() else ", ".join(map(str, range(len(names))))
            raise UsageError(f"{path}:{line_no}: label {raw!r} is not a {task} label; valid: {valid}")
        for col, i in text_cols.items():
            columns[col].append(row[i])
        columns["label"].append(label)
        columns["idx"].append(len(columns["idx"]))
    if not columns["idx"]:
        raise UsageError(f"{path}: no data rows")
    return columns


def majority_baseline(task: str, glue_dir: str | Path | None) -> dict[str, float]:
    """Accuracy (and, for MRPC/QQP, F1 of the positive class) of always predicting the dev set's most common
    label: the score a classifier that learnt nothing gets. The dev set is read from glue_dir, else the Hub."""
    if glue_dir:
        labels = read_glue_tsv(Path(glue_dir) / GLUE_FOLDER[task] / "dev.tsv", task)["label"]
    else:
        labels = datasets.load_dataset(HUB_DATASET, task, split="validation")["label"]
    counts = Counter(labels)
    label, n = counts.most_common(1)[0]
    base = {"accuracy": n / len(labels)}
    if task in ("mrpc", "qqp"):
        precision = counts[1] / len(labels)
        base["f1"] = 2 * precision / (precision + 1) if label == 1 else 0.0
    return base


def glue_features(task: str) -> datasets.Features:
    """The Hub `nyu-mll/glue` schema of one task: text columns, label (ClassLabel or float32), idx."""
    feats = {c: datasets.Value("string") for c in GLUE_TSV[task][1]}
    names = LABEL_NAMES[task]
    feats["label"] = datasets.ClassLabel(names=names) if names else datasets.Value("float32")
    feats["idx"] = datasets.Value("int32")
    return datasets.Features(feats)


def glue_split_names(task: str, with_train: bool = True) -> list[str]:
    """Splits a run needs: train (unless evaluating only) and the dev split(s); MNLI has two dev sets."""
    dev = ["validation_matched", "validation_mismatched"] if task == "mnli" else ["validation"]
    return (["train"] if with_train else []) + dev


CUSTOM_FILE_FLAGS = {"train": "train_file", "validation": "validation_file"}


def _where(args: argparse.Namespace, split: str) -> str:
    """How messages name a split's source: the flag and file for custom data, else the task's split."""
    flag = CUSTOM_FILE_FLAGS.get(split)
    if flag is not None and getattr(args, flag) is not None:
        return f"--{flag} {getattr(args, flag)}"
    return f"the {args.task_name} {split} split"


def _first_missing(ds: datasets.Dataset, column: str) -> int | None:
    """Index of the first row whose value is missing (null, NaN or blank text), or None when all are there."""
    for i, v in enumerate(ds[column]):
        if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
            return i
    return None


def _loader_reason(e: BaseException) -> str:
    """One line from a loader's exception: datasets wraps the pandas/pyarrow error that says what is wrong."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


@contextlib.contextmanager
def _quiet_datasets():
    """Silence datasets' progress bars and logging (a failed json parse logs its own error) for a file read."""
    level, bars_off = datasets.utils.logging.get_verbosity(), datasets.utils.are_progress_bars_disabled()
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        datasets.utils.logging.set_verbosity(level)
        if not bars_off:
            datasets.utils.enable_progress_bars()


def load_custom_files(args: argparse.Namespace) -> dict[str, datasets.Dataset]:
    """Read --train_file/--validation_file: csv with a header row, or json (a list of records or json lines),
    each file in the format of its own extension.

    Each file must be UTF-8 and readable, hold at least one row and a ``label`` column with a value in every
    row; text columns are checked by `text_columns`, the kind of labels by `label_setup`. Raises UsageError
    naming the file (and line or data row, counted from 1 without the csv header) otherwise.
    """
    files = {s: getattr(args, f) for s, f in CUSTOM_FILE_FLAGS.items() if getattr(args, f) is not None}
    if "validation" not in files or ("train" not in files and not args.eval_only):
        raise UsageError("give both --train_file and --validation_file (or --validation_file with --eval_only)")
    raw = {}
    for split, path in files.items():
        where, fmt = _where(args, split), "csv" if path.endswith(".csv") else "json"
        blank = True
        for _, text in _utf8_lines(Path(path)):  # the loaders' decode errors name neither line nor file
            blank = blank and not text.strip()
        if blank:
            raise UsageError(f"{where} is empty; it needs a header row and data rows (csv) or records (json)")
        try:
            with _quiet_datasets():
                ds = datasets.load_dataset(fmt, data_files={split: path}, split=split)
        except Exception as e:  # pandas, pyarrow and datasets errors alike: the file is not what it claims
            if "corresponds to no data" in str(e):  # datasets' words for a file without rows
                raise UsageError(f"{where} has no data rows") from None
            raise UsageError(f"{where} cannot be read as {fmt}: {_loader_reason(e)}") from None
        if ds.num_rows == 0:
            raise UsageError(f"{where} has no data rows")
        if "label" not in ds.column_names:
            raise UsageError(f"{where} has no 'label' column (columns: {', '.join(ds.column_names)}); custom data "
                             "needs one: class names or ids, or numbers for regression")
        row = _first_missing(ds, "label")
        if row is not None:
            raise UsageError(f"{where}: data row {row + 1} has no label; every row needs one")
        raw[split] = ds
    text_columns(args, raw)  # now, before the model is loaded
    return raw


def load_glue(args: argparse.Namespace) -> dict[str, datasets.Dataset]:
    """Load the run's splits as datasets in the Hub schema: from --glue_dir, the Hub, or --train_file."""
    if args.train_file is not None or args.validation_file is not None:  # a task picks the metric and labels
        return load_custom_files(args)
    task, splits = args.task_name, glue_split_names(args.task_name, with_train=not args.eval_only)
    if args.glue_dir is not None:
        folder = Path(args.glue_dir) / GLUE_FOLDER[task]
        return {s: datasets.Dataset.from_dict(read_glue_tsv(folder / GLUE_SPLIT_FILES[s], task),
                                              features=glue_features(task)) for s in splits}
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    try:
        return {s: datasets.load_dataset(HUB_DATASET, task, split=s) for s in splits}
    except Exception as e:  # no network, offline mode, no cache: all end the same way for the user
        why = "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set" if offline else type(e).__name__
        raise UsageError(f"cannot load {HUB_DATASET}/{task} from the Hub ({why}); pass --glue_dir DIR with a "
                         f"local GLUE copy (DIR/{GLUE_FOLDER[task]}/train.tsv, dev.tsv)") from None


def _label_kind(args: argparse.Namespace, split: str, ds: datasets.Dataset) -> str:
    """What a custom split's labels are: 'integer', 'number' (float), 'text' or 'bool'; UsageError otherwise."""
    feature = ds.features["label"]
    dtype = feature.dtype if isinstance(feature, datasets.Value) else ""
    for kind, dtypes in (("integer", ("int", "uint")), ("number", ("float",)), ("text", ("string", "large_string")),
                         ("bool", ("bool",))):
        if dtype.startswith(dtypes):
            return kind
    types = sorted({type(v).__name__ for v in ds["label"]})  # e.g. datasets' Json feature for json mixing types
    what = f"mixes {' and '.join(types)} values" if len(types) > 1 else f"holds {types[0]} values"
    raise UsageError(f"{_where(args, split)}: the label column {what}; valid: one class name, integer class id "
                     "or number (regression) per row, of one kind in the whole file")



def label_setup(args: argparse.Namespace, raw: dict[str, datasets.Dataset]):
    """Return (is_regression, label_names or None, label_to_id or None) for the run's data.

    GLUE data (--glue_dir or the Hub) is in the Hub schema, its labels already class ids. For custom files
    --task_name decides: stsb is regression on numbers, any other task takes its class names or ids 0..n-1.
    Without a task, float labels in the first file (train, else validation) mean regression, and integers,
    strings or booleans mean classes named by the sorted distinct values of all files. Whole-number scores
    of a regression split are cast to float32 in `raw`.

    Refused (UsageError): labels that do not fit that decision (text for regression, decimal numbers for
    classes, integer ids in one file and names in the other), infinite scores, and training data of a single
    class (nothing to learn). Only warned about on stderr, training runs: a validation class that never
    occurs in training, because a small or skewed sample can honestly lack a rare class; the model cannot
    learn it, so those rows count as errors.
    """
    if args.train_file is None and args.validation_file is None:
        names = LABEL_NAMES[args.task_name]
        return names is None, names, None  # Hub schema: labels are already class ids
    task, first = args.task_name, next(iter(raw))
    kinds = {s: _label_kind(args, s, ds) for s, ds in raw.items()}
    if task is not None:
        regression = LABEL_NAMES[task] is None
        why = f"{task} is a regression task" if regression else f"{task} is a classification task"
    else:
        regression = kinds[first] == "number"
        why = f"the float labels of {_where(args, first)} make this a regression task"
    if regression:
        for s, ds in raw.items():
            if kinds[s] not in ("integer", "number"):
                raise UsageError(f"{_where(args, s)}: label {ds[0]['label']!r} is not a number, but {why}")
            bad = next((v for v in ds.unique("label") if not math.isfinite(v)), None)
            if bad is not None:
                raise UsageError(f"{_where(args, s)}: label {bad} is not a finite number")
            if kinds[s] == "integer":
                raw[s] = ds.cast_column("label", datasets.Value("float32"))
        return True, None, None
    names = LABEL_NAMES[task] if task is not None else None
    valid = f"; valid: {', '.join(names)} or 0-{len(names) - 1}" if names else ""
    for s, ds in raw.items():
        if kinds[s] == "number":
            example = next((v for v in ds.unique("label") if not float(v).is_integer()), ds[0]["label"])
            raise UsageError(f"{_where(args, s)}: label {example!r} is a decimal number, but " +
                             (f"{why}{valid}" if task else f"the labels of {_where(args, first)} are classes "
                              f"({kinds[first]}); use class labels of one kind in every file"))
        if task is None and kinds[s] != kinds[first]:
            raise UsageError(f"{_where(args, s)} has {kinds[s]} labels but {_where(args, first)} has "
                             f"{kinds[first]} labels; use one kind of class label in every file")
    if names is not None:
        to_id = label_to_id(names)
        for s, ds in raw.items():
            bad = [v for v in ds.unique("label") if v not in to_id]
            if bad:
                raise UsageError(f"{_where(args, s)}: label {bad[0]!r} is not a {task} label{valid}")
    else:
        values = sorted({v for ds in raw.values() for v in ds.unique("label")})
        names, to_id = [str(v) for v in values], class_ids(values)
    if "train" in raw and not args.eval_only:
        seen = {to_id[v] for v in raw["train"].unique("label")}
        if len(seen) < 2:
            raise UsageError(f"{_where(args, 'train')}: every label is {names[seen.pop()]!r}; classification "
                             "needs at least two classes in the training data")
        for s, ds in raw.items():
            unseen = sorted({to_id[v] for v in ds.unique("label")} - seen)
            if unseen:
                labels = ", ".join(repr(names[i]) for i in unseen)
                warn(f"label{'s' if len(unseen) > 1 else ''} {labels} of {_where(args, s)} never "
                      f"occur{'' if len(unseen) > 1 else 's'} in {_where(args, 'train')}; the model cannot learn "
                      f"{'them' if len(unseen) > 1 else 'it'} and those rows count as errors")
    return False, names, to_id


def _is_text(feature) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def text_columns(args: argparse.Namespace, raw: dict[str, datasets.Dataset]) -> tuple[str, str | None]:
    """The one or two columns to tokenize: the task's (TASK_TO_KEYS); for custom data without a task,
    sentence1 and sentence2 when present, else the first one or two text columns besides label and idx.

    Every split must hold them as text, and custom data a value in every row (else UsageError naming the file).
    """
    first = next(iter(raw))
    cols = [c for c in raw[first].column_names if c not in ("label", "idx")]
    if args.task_name:
        keys = TASK_TO_KEYS[args.task_name]
    elif {"sentence1", "sentence2"} <= set(cols):
        keys = ("sentence1", "sentence2")
    else:
        texts = [c for c in cols if _is_text(raw[first].features[c])]
        if not texts:
            raise UsageError(f"{_where(args, first)} has no text column (columns: "
                             f"{', '.join(raw[first].column_names)}); custom data needs one or two columns of text "
                             "besides 'label'")
        keys = (texts[0], texts[1] if len(texts) > 1 else None)
    needed = [k for k in keys if k is not None]
    custom = args.train_file is not None or args.validation_file is not None
    for split, ds in raw.items():
        where = _where(args, split)
        for key in needed:
            if key not in ds.column_names:
                raise UsageError(f"{where} has no column {key!r} (columns: {', '.join(ds.column_names)}); "
                                 f"{args.task_name or 'this'} data needs {' and '.join(needed)}")
            if not _is_text(ds.features[key]):
                dtype = getattr(ds.features[key], "dtype", type(ds.features[key]).__name__)
                raise UsageError(f"{where}: column {key!r} holds {dtype} values, not text")
            row = next((i for i, v in enumerate(ds[key]) if v is None), None) if custom else None
            if row is not None:  # blank text is fine for a tokenizer, a missing value is not
                raise UsageError(f"{where}: data row {row + 1} has no text in column {key!r}; every row needs one")
    return keys


def tokenize_splits(args, raw, tokenizer, label_ids: dict | None) -> dict[str, datasets.Dataset]:
    """Tokenize every split; the label column becomes ``labels`` (class id or float score)."""
    key1, key2 = text_columns(args, raw)

    def encode(batch):
        texts = (batch[key1],) if key2 is None else (batch[key1], batch[key2])
        enc = tokenizer(*texts, padding="max_length" if args.pad_to_max_length else False,
                        max_length=args.max_length, truncation=True)
        enc["labels"] = [label_ids[v] for v in batch["label"]] if label_ids else batch["label"]
        return enc

    return {name: ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenize {name}")
            for name, ds in raw.items()}
