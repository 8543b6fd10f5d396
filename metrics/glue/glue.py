"""GLUE dev-set metrics as a local `evaluate` module.

Load it by path, never from the Hub: ``evaluate.load("<repo>/metrics/glue", "mrpc")``. The config name is the
task; it picks the metrics the GLUE leaderboard reports for that task:

* cola: ``matthews_correlation`` (Matthews correlation of predicted vs. gold class ids)
* stsb: ``pearson`` and ``spearmanr`` (correlations of predicted vs. gold similarity scores)
* mrpc, qqp: ``accuracy`` and ``f1`` (F1 of the positive class 1)
* sst2, mnli, mnli_matched, mnli_mismatched, qnli, rte, wnli, hans: ``accuracy``

All values are plain Python floats in [−1, 1].
"""
from __future__ import annotations

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

_ACCURACY_ONLY = ("sst2", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli", "hans")
TASKS = ("cola", "stsb", "mrpc", "qqp") + _ACCURACY_ONLY

_DESCRIPTION = "Metrics of the GLUE benchmark dev sets (one config per task)."
_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={ICLR}, year={2019}
}
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids (int), or scores (float) for stsb.
    references: gold class ids (int), or gold scores (float) for stsb.
Returns:
    dict of metric name -> float, e.g. {"accuracy": 0.75, "f1": 0.8} for mrpc.
Example:
    >>> m = evaluate.load("metrics/glue", "mrpc")
    >>> m.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.666..., 'f1': 0.666...}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Glue(evaluate.Metric):
    """The GLUE metric for one task (the ``config_name`` given to ``evaluate.load``)."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in TASKS:
            raise KeyError(f"unknown GLUE task {self.config_name!r} for the glue metric; valid: {', '.join(TASKS)}")
        dtype = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
            format="numpy",
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        preds, refs = np.asarray(predictions), np.asarray(references)
        task = self.config_name
        if task == "cola":
            return {"matthews_correlation": float(matthews_corrcoef(refs, preds))}
        if task == "stsb":
            return {"pearson": float(pearsonr(preds, refs)[0]), "spearmanr": float(spearmanr(preds, refs)[0])}
        accuracy = float((preds == refs).mean())
        if task in ("mrpc", "qqp"):
            return {"accuracy": accuracy, "f1": float(f1_score(y_true=refs, y_pred=preds))}
        return {"accuracy": accuracy}
