"""Lightning tasks, data modules and the ``attnzoo-train`` CLI (the only layer that knows Lightning).

* :class:`ClassificationTask` — any timm model (attnzoo's included) trained with timm's recipe pieces;
* :class:`SparsifinerDistillationTask` — the Sparsifiner authors' two-phase recipe on top of it;
* :class:`ImageFolderData` — ``root/<split>/<class>/<image>`` trees with timm's transforms;
* :class:`DigitsData` — scikit-learn's handwritten digits written once as such a tree (offline demo data);
* :func:`attnzoo.train.cli.main` — the ``attnzoo-train`` LightningCLI.

Exporting a checkpoint for timm is :func:`attnzoo.export.export_checkpoint` (``attnzoo export``), which
needs no Lightning.
"""

from .classification import ClassificationTask
from .data import ImageFolderData
from .detection import CocoData, DetectionTask
from .digits import DigitsData, export_digits
from .segmentation import SegFolderData, SegmentationTask
from .sparsifiner import SparsifinerDistillationTask

__all__ = [
    "ClassificationTask",
    "CocoData",
    "DetectionTask",
    "DigitsData",
    "ImageFolderData",
    "SegFolderData",
    "SegmentationTask",
    "SparsifinerDistillationTask",
    "export_digits",
]
