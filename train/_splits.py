"""The split bookkeeping and loaders the dense-prediction data modules (COCO, ADE-style folders) share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader


class SplitDataModule(LightningDataModule):
    """Builds each split's dataset once (``_dataset(split, training)``) and its loader with ``collate_fn``.

    Subclasses set ``collate_fn`` and implement ``_dataset``; their hparams hold ``train_split``,
    ``val_split``, ``test_split``, ``batch_size``, ``eval_batch_size`` and ``num_workers``.
    """

    collate_fn: Callable[[list], Any]

    def __init__(self):
        super().__init__()
        self.datasets: dict[str, Any] = {}

    def _dataset(self, split: str, training: bool) -> Any:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        hp = self.hparams
        splits = {
            "fit": [("train", hp.train_split), ("val", hp.val_split)],
            "validate": [("val", hp.val_split)],
            "test": [("test", hp.test_split or hp.val_split)],
            "predict": [("predict", hp.test_split or hp.val_split)],
        }[stage]
        for key, split in splits:
            if key not in self.datasets:
                self.datasets[key] = self._dataset(split, training=key == "train")

    def _loader(self, key: str, training: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.datasets[key],
            batch_size=hp.batch_size if training else (hp.eval_batch_size or hp.batch_size),
            shuffle=training,
            drop_last=training,
            num_workers=hp.num_workers,
            collate_fn=type(self).collate_fn,
            persistent_workers=hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", False)
