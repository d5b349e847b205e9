"""The split bookkeeping and loaders attnzoo's data modules share (ImageFolder trees, COCO, ADE-style folders)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader

# the datasets each Lightning stage needs, by key
STAGE_KEYS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


class SplitDataModule(LightningDataModule):
    """Builds each split's dataset once (``_dataset(split, what, training)``) and its loader.

    ``what`` is the argument that named the split (``train_split``...), for error messages. Subclasses implement
    ``_dataset``, may set ``collate_fn`` and extend :meth:`split_names` and :meth:`loader_kwargs`; their hparams
    hold ``train_split``, ``val_split``, ``test_split``, ``batch_size``, ``eval_batch_size`` and ``num_workers``.
    """

    collate_fn: Callable[[list], Any] | None = None

    def __init__(self):
        super().__init__()
        self.datasets: dict[str, Any] = {}

    def _dataset(self, split: str, what: str, training: bool) -> Any:
        raise NotImplementedError

    def split_names(self) -> dict[str, str]:
        """The folder of each dataset key; test and predict fall back to the validation split."""
        hp = self.hparams
        evaluation = hp.test_split or hp.val_split
        return {"train": hp.train_split, "val": hp.val_split, "test": evaluation, "predict": evaluation}

    def setup(self, stage: str) -> None:
        names = self.split_names()
        for key in STAGE_KEYS[stage]:
            if key not in self.datasets:
                self.datasets[key] = self._dataset(names[key], f"{key}_split", training=key == "train")

    def loader_kwargs(self, training: bool) -> dict[str, Any]:
        """``DataLoader`` arguments; training batches are shuffled and even (a ragged last batch adds noise to BN)."""
        hp = self.hparams
        return dict(
            batch_size=hp.batch_size if training else (hp.eval_batch_size or hp.batch_size),
            shuffle=training,
            drop_last=training,
            num_workers=hp.num_workers,
            collate_fn=type(self).collate_fn,
            persistent_workers=hp.num_workers > 0,
        )

    def _loader(self, key: str, training: bool) -> DataLoader:
        kwargs = self.loader_kwargs(training)
        if training and kwargs.get("drop_last"):
            # a training split smaller than one batch per process would give no batch at all: it is one batch
            world_size = getattr(self.trainer, "world_size", 1) or 1
            per_process = math.ceil(len(self.datasets[key]) / world_size)
            if 0 < per_process < kwargs["batch_size"]:
                rank_zero_info(
                    f"batch_size {kwargs['batch_size']} is larger than the {per_process} training images per process; "
                    f"training batches hold {per_process}"
                )
                kwargs["batch_size"] = per_process
        return DataLoader(self.datasets[key], **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", False)
