"""Lightning tasks, data modules and the ``attnzoo-train`` CLI: the only floor that knows Lightning.

* :class:`ClassificationTask` — any timm model (attnzoo's included) trained with timm's recipe pieces;
  :class:`SparsifinerDistillationTask` — the Sparsifiner authors' two-phase recipe on top of it;
* :class:`DetectionTask`, :class:`SegmentationTask` — torchvision's detectors / smp's decoders on a timm
  backbone, on one dense-task base (:mod:`.dense`);
* data: :class:`ImageFolderData` (ImageNet-style trees), :class:`DigitsData` (scikit-learn's digits written
  as such a tree by :func:`write_digits`), :class:`CocoData` (COCO json), :class:`SegFolderData` (ADE20K);
* :mod:`.checkpoint` reads a classification checkpoint without Lightning (``attnzoo export`` uses it);
  :func:`attnzoo.train.cli.main` is the ``attnzoo-train`` LightningCLI.

The names below load on first use, so that importing the Lightning-free :mod:`.checkpoint` does not import
Lightning.
"""

import importlib

_MODULES = {
    "ClassificationTask": "classification",
    "CocoData": "coco_data",
    "DetectionTask": "detection",
    "DigitsData": "digits",
    "ImageFolderData": "data",
    "LongRangeData": "long_range",
    "SegFolderData": "segfolder_data",
    "SegmentationTask": "segmentation",
    "SparsifinerDistillationTask": "sparsifiner",
    "write_digits": "digits",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})
