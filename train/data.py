"""ImageNet-style folders (``root/<split>/<class>/<image>``) as a LightningDataModule, with timm's transforms.

Preprocessing follows the model being trained (its ``pretrained_cfg``: input size, interpolation, crop_pct,
mean/std, read at ``setup``), so a 384-px or differently normalised model needs no repeat in the config;
values given here win. Training uses timm's ``create_transform``; evaluation resizes to
``input_size / crop_pct`` and centre-crops, as timm's validation does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from timm.data import ImageDataset, create_transform, resolve_data_config
from timm.data.readers import get_img_extensions
from timm.data.readers.reader import Reader
from timm.utils.misc import natural_key

from ._images import read_rgb
from ._splits import SplitDataModule

__all__ = ["ImageFolderData"]

_log = logging.getLogger(__name__)
_MAX_SKIPS = 20  # consecutive unreadable images before giving up, as timm


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _walk_images(folder: str) -> list[tuple[str, str]]:
    """``(path, name of the folder holding it)`` of each image under ``folder`` (``""`` for those directly in it).

    What timm's folder reader finds, but a symlink to a folder that holds the link (a loop) is logged and not
    followed: timm's ``os.walk(followlinks=True)`` went round a loop until the paths grew too long, repeating every
    image, and through a link to the data root pulled the other splits (validation images) into this one. Other
    symlinked folders and files are followed.
    """
    extensions = get_img_extensions(as_set=True)
    found: list[tuple[str, str]] = []

    def visit(directory: str, label: str, walking: tuple[str, ...]) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not entry.is_dir():
                    if os.path.splitext(entry.name)[1].lower() in extensions:
                        found.append((entry.path, label))
                    continue
                real = os.path.realpath(entry.path)
                if entry.is_symlink() and any(_inside(walked, real) for walked in walking):
                    _log.warning("did not follow the symlink %s to %s, which holds it (a loop)", entry.path, real)
                    continue
                visit(entry.path, entry.name, (*walking, real))

    visit(folder, "", (os.path.realpath(folder),))
    return found


class _FolderReader(Reader):
    """timm's ``ReaderImageFolder`` (samples, ``class_to_idx``, file names) over :func:`_walk_images`.

    ``class_to_idx``: folder name -> target; images in other folders are left out. ``None``: every folder holding
    images is a class, in natural order (timm's rule).
    """

    def __init__(self, root: str, class_to_idx: dict[str, int] | None = None):
        super().__init__()
        self.root = root
        found = _walk_images(root)
        if class_to_idx is None:
            labels = sorted({label for _, label in found}, key=natural_key)
            class_to_idx = {label: index for index, label in enumerate(labels)}
        self.class_to_idx = class_to_idx
        samples = [(path, class_to_idx[label]) for path, label in found if label in class_to_idx]
        self.samples = sorted(samples, key=lambda sample: natural_key(sample[0]))

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.samples[index]

    def __len__(self) -> int:
        return len(self.samples)

    def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        path = self.samples[index][0]
        if basename:
            return os.path.basename(path)
        return path if absolute else os.path.relpath(path, self.root)


class NamedImageDataset(ImageDataset):
    """timm's ImageDataset over a loop-safe scan (:func:`_walk_images`), images read by :func:`read_rgb`.

    An unreadable image (a truncated JPEG, say) is skipped with its file name in the log (timm names only its
    index); an image of a bit depth that cannot be read right (:func:`read_rgb`) is an error naming the file.
    ``with_paths``: samples are ``(image, target, absolute path)``, the path of the image actually read, so that
    predictions are written next to the right file name.
    """

    def __init__(self, root: str, class_map: dict[str, int] | None = None, with_paths: bool = False, **kwargs):
        super().__init__(root, reader=_FolderReader(str(root), class_map), **kwargs)
        self.with_paths = with_paths

    def __getitem__(self, index: int):
        for attempt in range(_MAX_SKIPS):
            candidate = (index + attempt) % len(self)
            path, target = self.reader[candidate]
            try:
                image = read_rgb(path)
            except OSError as error:  # PIL: truncated, corrupt, not an image
                _log.warning("skipped unreadable image %s (%s)", self.filename(candidate, absolute=True), error)
                continue
            if self.transform is not None:
                image = self.transform(image)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return (image, target, self.filename(candidate, absolute=True)) if self.with_paths else (image, target)
        raise RuntimeError(f"{_MAX_SKIPS} consecutive images from index {index} could not be read")


_EVAL_SYNONYMS = ("validation", "val", "valid", "eval", "evaluation")


def _resolve_split(root: Path, split: str, what: str) -> Path:
    """``root/split``; for an evaluation split also its usual synonyms (``val`` for ``validation``...)."""
    candidates = [split] + ([s for s in _EVAL_SYNONYMS if s != split] if split in _EVAL_SYNONYMS else [])
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"{what}: no folder {split!r} in root {str(root)!r} (tried {', '.join(candidates)})")


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))


def _warn_empty_class_folders(dataset: NamedImageDataset, folder: Path, classes: list[str], what: str) -> None:
    """A class folder without images is logged: a class that silently gets no samples in this split."""
    counted = {target for _, target in dataset.reader.samples}
    for name in classes:
        if dataset.reader.class_to_idx[name] not in counted:
            _log.warning("%s: class folder %s holds no images", what, folder / name)


class ImageFolderData(SplitDataModule):
    """Train/validation/test/predict splits of an image-folder tree, loaded with timm's transforms.

    Args:
        root: folder holding the splits, e.g. ``/data/imagenet`` with ``train/`` and ``val/`` (or
            ``validation/``), each with one sub-folder per class.
        num_classes: number of classes; ``None``: the class folders of the training split are counted now
            (the CLI links this to the task's ``num_classes``).
        train_split, val_split: folder names; ``test_split`` and ``predict_split`` default to ``val_split``. The
            predict split may also hold its images without class folders, and needs no training split beside it
            (``predict --ckpt_path``: the class names are the checkpoint's).
        batch_size: per process (per GPU). ``eval_batch_size`` defaults to ``batch_size``.
        num_workers, pin_memory, persistent_workers: DataLoader settings (memory is pinned only when CUDA is
            available).
        input_size, interpolation, crop_pct, mean, std: preprocessing; ``None`` takes the model's
            pretrained config (``input_size``: an int side or ``[C, H, W]``).
        scale, ratio, hflip, vflip, color_jitter: timm's random-resized-crop and flip/jitter augmentation.
        auto_augment: e.g. ``rand-m9-mstd0.5-inc1`` (RandAugment, DeiT/NAT/Swin recipes), ``None``: off.
        train_interpolation: resize interpolation for training (``random`` picks bilinear or bicubic per
            image, as timm's ``train.py``); ``None``: the evaluation interpolation.
        re_prob, re_mode, re_count: random erasing (timm's ``RandomErasing``).
        no_aug: training images get the evaluation transform (debugging).
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int | None = None,
        train_split: str = "train",
        val_split: str = "validation",
        test_split: str | None = None,
        predict_split: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        input_size: int | list[int] | None = None,
        interpolation: str | None = None,
        crop_pct: float | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip: float = 0.5,
        vflip: float = 0.0,
        color_jitter: float | None = 0.4,
        auto_augment: str | None = None,
        train_interpolation: str | None = None,
        re_prob: float = 0.0,
        re_mode: str = "pixel",
        re_count: int = 1,
        no_aug: bool = False,
    ):
        super().__init__()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch_size must be >= 1, got {batch_size} (eval_batch_size {eval_batch_size})")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if isinstance(input_size, (list, tuple)) and len(input_size) != 3:
            raise ValueError(f"input_size must be an int or [C, H, W], got {input_size}")
        self.root = Path(root).expanduser()
        if num_classes is None:
            if not self.root.is_dir():
                raise FileNotFoundError(f"root: no such folder {str(self.root)!r}")
            num_classes = len(_class_folders(_resolve_split(self.root, train_split, "train_split")))
            if num_classes == 0:
                raise ValueError(f"root: {str(self.root / train_split)!r} has no class folders")
        elif num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        # num_classes stays out of the hparams: the task logs it, and a counted value would differ from the
        # configured ``null`` (Lightning refuses to merge the two modules' hparams on a mismatch)
        self.save_hyperparameters(ignore=["num_classes"])
        self.data_config: dict[str, Any] | None = None
        self.class_to_idx: dict[str, int] | None = None

    # --- preprocessing ----------------------------------------------------------------------------
    def _model_pretrained_cfg(self) -> dict[str, Any]:
        """The pretrained config of the model being trained, when a trainer connects one."""
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        return dict(getattr(getattr(module, "model", None), "pretrained_cfg", None) or {})

    def resolve_data_config(self, pretrained_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
        """Input size, interpolation, crop_pct, mean/std: this module's values over the model's config."""
        hp = self.hparams
        args: dict[str, Any] = dict(interpolation=hp.interpolation, crop_pct=hp.crop_pct, mean=hp.mean, std=hp.std)
        if isinstance(hp.input_size, int):
            args["img_size"] = hp.input_size
        elif hp.input_size is not None:
            args["input_size"] = tuple(hp.input_size)
        return resolve_data_config(args=args, pretrained_cfg=pretrained_cfg or {})

    def train_transform(self):
        hp, cfg = self.hparams, self.data_config
        return create_transform(
            **{k: cfg[k] for k in ("input_size", "mean", "std", "crop_pct")},
            interpolation=hp.train_interpolation or cfg["interpolation"],
            is_training=True,
            no_aug=hp.no_aug,
            scale=tuple(hp.scale),
            ratio=tuple(hp.ratio),
            hflip=hp.hflip,
            vflip=hp.vflip,
            color_jitter=hp.color_jitter or 0.0,
            auto_augment=hp.auto_augment,
            re_prob=hp.re_prob,
            re_mode=hp.re_mode,
            re_count=hp.re_count,
        )

    def eval_transform(self):
        cfg = self.data_config
        return create_transform(
            **{k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")},
            is_training=False,
        )

    # --- datasets ---------------------------------------------------------------------------------
    @property
    def label_names(self) -> list[str] | None:
        """The class folder names in class-index order (known after ``setup``); tasks record them in checkpoints."""
        if self.class_to_idx is None:
            return None
        return sorted(self.class_to_idx, key=self.class_to_idx.__getitem__)

    def _dataset(self, split: str, what: str, training: bool) -> NamedImageDataset:
        folder = _resolve_split(self.root, split, what)
        found = set(_class_folders(folder))
        known = set(self.class_to_idx or ())
        predict = what == "predict_split"
        if found - known and not predict:
            raise ValueError(
                f"{what}: {str(folder)!r} has classes the training split lacks: {sorted(found - known)[:5]}"
            )
        # predict: images in the training classes' folders keep their targets; any other layout (loose images,
        # other folders) is read as is, its targets unused (the CSV shows the predictions, not the targets)
        class_map = self.class_to_idx if not predict or (found and found <= known) else None
        transform = self.train_transform() if training else self.eval_transform()
        dataset = NamedImageDataset(str(folder), class_map=class_map, transform=transform, with_paths=predict)
        if len(dataset) == 0:
            raise ValueError(f"{what}: {str(folder)!r} holds no images")
        if class_map is not None:
            _warn_empty_class_folders(dataset, folder, sorted(found), what)
        return dataset

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: no such folder {str(self.root)!r}")
        if self.data_config is None:
            self.data_config = self.resolve_data_config(self._model_pretrained_cfg())
            rank_zero_info(f"data config: {self.data_config}")
        if self.class_to_idx is None:
            try:
                train = _resolve_split(self.root, hp.train_split, "train_split")
            except FileNotFoundError:
                if stage != "predict":
                    raise
                train = None  # predicting from a checkpoint, which knows its classes
            if train is not None:
                # timm's order (natural sort of the class folder names), fixed by the training split for all splits
                classes = sorted(_class_folders(train), key=natural_key)
                if len(classes) != self.num_classes:
                    raise ValueError(
                        f"num_classes is {self.num_classes} but {str(train)!r} has {len(classes)} class folders"
                    )
                self.class_to_idx = {name: index for index, name in enumerate(classes)}
        super().setup(stage)

    def split_names(self) -> dict[str, str]:
        hp = self.hparams
        return {**super().split_names(), "predict": hp.predict_split or hp.val_split}

    # --- loaders ----------------------------------------------------------------------------------
    def loader_kwargs(self, training: bool) -> dict[str, Any]:
        hp = self.hparams
        return {  # even training batches also suit Mixup/CutMix
            **super().loader_kwargs(training),
            "pin_memory": hp.pin_memory and torch.cuda.is_available(),
            "persistent_workers": hp.persistent_workers and hp.num_workers > 0,
        }
