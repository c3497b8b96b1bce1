"""Segmentation metrics computed from a confusion matrix.

Every metric here is a pure function of one integer confusion matrix
``C[true, predicted]`` (rows are reference classes, columns are predicted
classes), so metrics accumulated over batches, blocks or processes are exact:
sum the matrices, then compute. A class that is absent from both the reference
and the prediction has an undefined IoU; it is reported as ``None`` and left
out of the mean.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def confusion_matrix(
    reference: torch.Tensor | np.ndarray,
    predicted: torch.Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Count (reference, predicted) class pairs.

    Parameters
    ----------
    reference, predicted
        Integer class ids of the same shape, any number of dimensions.
    num_classes
        Number of classes; ids must lie in ``0 .. num_classes - 1``.
    ignore_index
        Reference value of pixels left out of the count (unlabelled or nodata).

    Returns
    -------
    numpy.ndarray
        ``(num_classes, num_classes)`` int64 matrix ``C[true, predicted]``.

    Raises
    ------
    ValueError
        If the shapes differ or a class id lies outside ``0 .. num_classes - 1``.
    """
    reference_t = torch.as_tensor(reference).reshape(-1).long()
    predicted_t = torch.as_tensor(predicted).reshape(-1).long().to(reference_t.device)
    if reference_t.shape != predicted_t.shape:
        raise ValueError(
            f"reference has {reference_t.numel()} values but predicted has {predicted_t.numel()}; "
            "pass arrays of the same shape"
        )

    if ignore_index is not None:
        keep = reference_t != ignore_index
        reference_t = reference_t[keep]
        predicted_t = predicted_t[keep]
    for name, values in (("reference", reference_t), ("predicted", predicted_t)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(
                f"{name} class ids span {int(values.min())}..{int(values.max())} but num_classes is "
                f"{num_classes}; map labels to 0..{num_classes - 1} or mark unlabelled pixels "
                f"with ignore_index={ignore_index}"
            )

    flat = reference_t * num_classes + predicted_t
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator > 0 else None


@dataclasses.dataclass(frozen=True)
class ClassScores:
    """Scores of one class against all others.

    ``None`` marks a score whose denominator is zero (the class is absent
    from the reference, the prediction or both).
    """

    class_id: int
    name: str
    support: int
    iou: float | None
    precision: float | None
    recall: float | None
    f1: float | None


@dataclasses.dataclass(frozen=True)
class SegmentationReport:
    """Metrics of a segmentation model on one evaluation set.

    Attributes
    ----------
    confusion
        ``(K, K)`` matrix ``C[true, predicted]`` in pixels.
    overall_accuracy
        Fraction of counted pixels whose predicted class equals the reference.
    mean_iou
        Mean IoU over classes whose IoU is defined.
    classes
        Per-class scores in class order.
    positive_class
        For cloud models, the id of the cloud class whose scores are the
        headline numbers; ``None`` for land cover.
    """

    confusion: np.ndarray
    class_names: tuple[str, ...]
    overall_accuracy: float | None
    mean_iou: float | None
    classes: tuple[ClassScores, ...]
    positive_class: int | None = None

    @property
    def pixels(self) -> int:
        """Number of pixels counted."""
        return int(self.confusion.sum())

    def scores_of(self, class_id: int) -> ClassScores:
        """Return the scores of ``class_id``."""
        for scores in self.classes:
            if scores.class_id == class_id:
                return scores
        raise KeyError(f"class id {class_id} is not in this report; ids are 0..{len(self.classes) - 1}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dictionary of every metric."""
        document: dict[str, Any] = {
            "pixels": self.pixels,
            "overall_accuracy": self.overall_accuracy,
            "mean_iou": self.mean_iou,
            "classes": [dataclasses.asdict(scores) for scores in self.classes],
            "confusion_matrix": {
                "rows": "reference class",
                "columns": "predicted class",
                "class_names": list(self.class_names),
                "counts": self.confusion.tolist(),
            },
        }
        if self.positive_class is not None:
            positive = self.scores_of(self.positive_class)
            document["positive_class"] = {
                "id": positive.class_id,
                "name": positive.name,
                "precision": positive.precision,
                "recall": positive.recall,
                "f1": positive.f1,
                "iou": positive.iou,
            }
        return document

    def to_json(self) -> str:
        """Return the report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def to_table(self) -> str:
        """Return the report as a plain-text table for terminals and logs."""
        lines = [f"pixels: {self.pixels}"]
        lines.append(f"overall accuracy: {_format(self.overall_accuracy)}")
        lines.append(f"mean IoU: {_format(self.mean_iou)}")
        if self.positive_class is not None:
            positive = self.scores_of(self.positive_class)
            lines.append(
                f"{positive.name}: precision {_format(positive.precision)}  recall "
                f"{_format(positive.recall)}  F1 {_format(positive.f1)}  IoU {_format(positive.iou)}"
            )

        name_width = max([len("class")] + [len(scores.name) for scores in self.classes])
        header = f"{'id':>3}  {'class':<{name_width}}  {'support':>10}  {'IoU':>6}  {'prec':>6}  {'recall':>6}  {'F1':>6}"
        lines += ["", header, "-" * len(header)]
        for scores in self.classes:
            lines.append(
                f"{scores.class_id:>3}  {scores.name:<{name_width}}  {scores.support:>10}  "
                f"{_format(scores.iou):>6}  {_format(scores.precision):>6}  "
                f"{_format(scores.recall):>6}  {_format(scores.f1):>6}"
            )

        lines += ["", "confusion matrix (rows: reference, columns: predicted)"]
        cell = max(7, len(str(int(self.confusion.max()))) + 1 if self.confusion.size else 7)
        lines.append(" " * (name_width + 2) + "".join(f"{i:>{cell}}" for i in range(len(self.classes))))
        for scores, row in zip(self.classes, self.confusion, strict=True):
            lines.append(f"{scores.name:<{name_width}}  " + "".join(f"{int(v):>{cell}}" for v in row))
        return "\n".join(lines)


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def segmentation_report(
    confusion: np.ndarray,
    class_names: Sequence[str],
    positive_class: int | None = None,
) -> SegmentationReport:
    """Compute overall accuracy, per-class IoU/precision/recall/F1 and mIoU.

    Parameters
    ----------
    confusion
        ``(K, K)`` matrix ``C[true, predicted]``.
    class_names
        ``K`` names in class-id order.
    positive_class
        Id of the class whose precision, recall, F1 and IoU are the headline
        scores (the cloud class of a cloud model).

    Returns
    -------
    SegmentationReport
    """
    matrix = np.asarray(confusion, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {matrix.shape}")
    if matrix.shape[0] != len(class_names):
        raise ValueError(
            f"confusion matrix has {matrix.shape[0]} classes but {len(class_names)} class names were given"
        )
    if positive_class is not None and not 0 <= positive_class < matrix.shape[0]:
        raise ValueError(f"positive_class {positive_class} is not a class id 0..{matrix.shape[0] - 1}")

    true_positive = np.diag(matrix)
    reference_total = matrix.sum(axis=1)
    predicted_total = matrix.sum(axis=0)
    scores = []
    for k, name in enumerate(class_names):
        tp = int(true_positive[k])
        fp = int(predicted_total[k]) - tp
        fn = int(reference_total[k]) - tp
        scores.append(
            ClassScores(
                class_id=k,
                name=str(name),
                support=int(reference_total[k]),
                iou=_ratio(tp, tp + fp + fn),
                precision=_ratio(tp, tp + fp),
                recall=_ratio(tp, tp + fn),
                f1=_ratio(2 * tp, 2 * tp + fp + fn),
            )
        )

    defined_iou = [s.iou for s in scores if s.iou is not None]
    return SegmentationReport(
        confusion=matrix,
        class_names=tuple(str(name) for name in class_names),
        overall_accuracy=_ratio(int(true_positive.sum()), int(matrix.sum())),
        mean_iou=float(np.mean(defined_iou)) if defined_iou else None,
        classes=tuple(scores),
        positive_class=positive_class,
    )
