"""``attnzoo-train``: a LightningCLI (``fit``, ``validate``, ``test``, ``predict``) whose YAML picks the task and data.

    attnzoo-train fit --config configs/demo/digits.yaml
    attnzoo-train fit --config configs/classification/nat_mini.yaml --data.root /data/imagenet
    attnzoo-train fit --config ... --ckpt_path last          # resume an interrupted run
    attnzoo-train validate --config ... --ckpt_path RUN/checkpoints/best.ckpt
    attnzoo-train fit --config ... --print_config            # the full resolved config

What this CLI adds to Lightning's:

* ``model`` and ``data`` are any LightningModule / LightningDataModule, chosen by ``class_path`` in the YAML
  (short names work for :mod:`attnzoo.train`'s classes); ``data.num_classes`` is linked into
  ``model.init_args.num_classes`` when both are instantiated.
* two checkpoint callbacks under ``trainer.default_root_dir/checkpoints``: ``checkpoint`` keeps ``best.ckpt``
  (``val/acc1`` by default; the detection and segmentation YAMLs set ``checkpoint.monitor``, e.g. ``val/map_50``,
  ``val/miou``) and ``last_checkpoint`` keeps ``last.ckpt`` (each epoch, every
  ``last_checkpoint.every_n_train_steps`` if set, and on Ctrl-C or an exception), which
  ``--ckpt_path last`` resumes from;
* ``trainer.logger: null`` (the default) means a CSV and a TensorBoard logger under
  ``trainer.default_root_dir`` (``csv/version_N/metrics.csv``, ``tensorboard/version_N``);
* no automatic ``--optimizer``/``--lr_scheduler`` arguments: the task builds timm's optimizer and
  scheduler itself (the CLI's torch schedulers would drop layer-wise lr decay).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

__all__ = ["AttnzooCLI", "main"]


def checkpoint_dir(default_root_dir: str | None) -> str:
    """Checkpoints live at a fixed place per run folder, so a restarted ``fit`` finds ``last.ckpt`` again."""
    return str(Path(default_root_dir or ".") / "checkpoints")


def default_loggers(default_root_dir: str | None) -> list[Any]:
    root = str(default_root_dir or ".")
    return [CSVLogger(root, name="csv"), TensorBoardLogger(root, name="tensorboard")]


class AttnzooCLI(LightningCLI):
    """LightningCLI with attnzoo's checkpointing, logging and the ``num_classes`` link (see the module doc)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_top_k": 1,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.monitor": None,
                "last_checkpoint.filename": "last",
                "last_checkpoint.save_top_k": 1,  # with no monitor: the latest state replaces the previous one
                "last_checkpoint.save_on_exception": True,
            }
        )
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)
        parser.link_arguments("trainer.default_root_dir", "last_checkpoint.dirpath", compute_fn=checkpoint_dir)
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = default_loggers(trainer_config.get("default_root_dir"))
        return super().instantiate_trainer(**kwargs)


def _register_classes() -> None:
    """Import what YAML refers to by short name: the tasks, the data modules and attnzoo's timm models."""
    import attnzoo  # noqa: F401  (registers the zoo's models in timm)
    import attnzoo.train  # noqa: F401  (the tasks and data modules of attnzoo.train.__all__)


def build_cli(args: list[str] | None = None, run: bool = True, **kwargs: Any) -> AttnzooCLI:
    """The CLI object (for tests and notebooks); ``main`` is the console script."""
    _register_classes()
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    return AttnzooCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        args=args,
        run=run,
        **kwargs,
    )


def main(args: list[str] | None = None) -> None:
    """Console script ``attnzoo-train``; returns ``None`` so that a successful run exits with status 0."""
    build_cli(args)


if __name__ == "__main__":
    main()
