"""``attnzoo-train``: a LightningCLI (``fit``, ``validate``, ``test``, ``predict``) whose YAML picks the task and data.

    attnzoo-train fit --config configs/demo/digits.yaml
    attnzoo-train fit --config nat_mini --data.root /data/imagenet   # a shipped recipe, by name
    attnzoo-train fit --config ... --ckpt_path last          # resume an interrupted run
    attnzoo-train validate --config ... --ckpt_path RUN/checkpoints/best.ckpt
    attnzoo-train predict --config ... --ckpt_path RUN/checkpoints/best.ckpt   # RUN/predictions.csv
    attnzoo-train fit --config ... --print_config            # the full resolved config
    attnzoo-train recipes [PATTERN]                          # the shipped recipes' names

What it adds to Lightning's: ``data.num_classes`` linked into the task; ``best.ckpt`` (``checkpoint``, by
``val/acc1`` unless the YAML sets ``checkpoint.monitor``) and ``last.ckpt`` (``last_checkpoint``: each epoch,
every ``every_n_train_steps`` if set, at the end, on Ctrl-C or an exception) under
``default_root_dir/checkpoints``, never with a ``-v1`` suffix; one run per folder (a lock, and no mixing with an
earlier run's checkpoints without continuing it, ``--ckpt_path last`` or one of its files, or ``--overwrite
true``); every checkpoint read with ``weights_only=True`` and written atomically; ``--ckpt_path``'s
hyper-parameters only fill in what the command and its YAML leave unset, and must be plain values (a
``class_path`` in them is refused: nothing read from a checkpoint is built); a resumed fit keeps the command's
optimizer settings (:mod:`.resume`); SIGTERM/SIGINT stop at the end of the current batch with ``last.ckpt`` saved
and exit 143/130, DataLoader workers ignoring them (:mod:`.signals`); CSV and TensorBoard loggers by default; no
automatic ``--optimizer``/``--lr_scheduler`` arguments (a torch scheduler would drop timm's layer-wise lr decay);
``--config NAME`` finds a recipe shipped in the wheel (:mod:`.recipes`); ``predict`` writes the top-k classes with
their names to a CSV, detection results as COCO JSON, segmentation label maps as PNGs (``predictions``:
:class:`~.predict_writer.PredictionWriter`); ``total_batch_size`` sets ``trainer.accumulate_grad_batches`` for the
world size and float16 precision falls back to 32-true on the CPU (:mod:`.portable`); SIGTERM/SIGINT stop after the
current batch with ``last.ckpt`` saved and exit 143/130 (:mod:`.signals`); a bad task or data argument
(``--model.init_args.model nat_minii``) ends in one line naming it, not in the parser's usage (with
``JSONARGPARSE_DEBUG=true``: the traceback).
"""

from __future__ import annotations

import fcntl
import inspect
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from .checkpoint import load_checkpoint
from .checkpoint_io import AtomicCheckpointIO, remove_partial_writes
from .parser_errors import OneLineErrorParser
from .portable import accumulation, cpu_precision, runs_on_cpu
from .predict_writer import PredictionWriter
from .recipes import RecipeError, describe_recipes, resolve_config_args
from .resume import CommandOptimizerSettings
from .signals import StopOnSignal, StopRequested, guard_dataloaders, kill_workers_at_exit, validation_follows

__all__ = ["AttnzooCLI", "LastCheckpoint", "CommandError", "main"]

LOCK_NAME = ".attnzoo-train.lock"
# the task arguments that name the network itself: a checkpoint of another one cannot be validated as this one
ARCHITECTURE_KEYS = ("model", "backbone", "detector", "decoder")


class CommandError(ValueError):
    """The command cannot run as given: its run folder is in use or holds another run's checkpoints, there is no
    ``last.ckpt`` to resume, it asks to read checkpoints with ``weights_only=False``, its checkpoint holds more than
    plain values or another network than the one asked for, its ``--config`` names no file or recipe, or a task or
    data module refused an argument. ``main`` prints it as one line."""


CONFIG_HELP = (
    "A YAML file, or the name of a recipe shipped with attnzoo (nat_tiny, classification/nat_tiny, digits); "
    "`attnzoo-train recipes` lists them."
)


def argument_error(error: BaseException) -> str | None:
    """One line for an error a task or data module raised on its arguments while the CLI built it, else ``None``.

    jsonargparse wraps such an error (``raise ... from error``) in a message that repeats the whole config; the
    constructor's own error is the innermost cause. Its leading argument name gets the CLI prefix
    (``model.init_args.``) when the constructor that raised it is found in the traceback.
    """
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is error or not isinstance(cause, (ValueError, TypeError, FileNotFoundError)):
        return None
    message = str(cause).strip()
    groups = {LightningModule: "model", LightningDataModule: "data"}
    frame = cause.__traceback__
    while frame is not None:
        owner = frame.tb_frame.f_locals.get("self") if frame.tb_frame.f_code.co_name == "__init__" else None
        group = next((key for cls, key in groups.items() if isinstance(owner, cls)), None)
        if group is not None:
            name = message.split(":", 1)[0].split(" ", 1)[0]
            if name in inspect.signature(type(owner).__init__).parameters:
                message = f"{group}.init_args.{message}"
            break
        frame = frame.tb_next
    return message


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: Lightning's checkpoint callback, plus a save when training ends, and a step save that falls
    right before a validation made after it.

    With ``every_n_train_steps`` set, Lightning stops saving at epoch ends, so a finished run's last.ckpt
    would hold the last multiple of the step count rather than the final state. A checkpoint written after the
    last batch of an epoch but before its validation resumes past that validation (Lightning counts the epoch as
    done), so that step's save waits for the end of the validation.
    """

    _deferred: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        if validation_follows(trainer):
            self._deferred = (args, kwargs)  # decided and saved after the validation: see the class doc
            return
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._deferred is not None and not trainer.sanity_checking:
            args, kwargs = self._deferred
            self._deferred = None
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


def checkpoint_dir(default_root_dir: str | None) -> str:
    """Checkpoints live at a fixed place per run folder, so a restarted ``fit`` finds ``last.ckpt`` again."""
    return str(Path(default_root_dir or ".") / "checkpoints")


def continues_run(ckpt_path: Any, checkpoints: Path) -> bool:
    """Whether ``fit --ckpt_path`` continues the run whose checkpoints are in ``checkpoints`` (``last``, or one of
    its files); another run's checkpoint would start a second run in the folder and replace its best and last."""
    if ckpt_path is None:
        return False
    if ckpt_path == "last":
        return True
    path = Path(str(ckpt_path)).expanduser()
    return path.is_file() and path.resolve().parent == checkpoints.resolve()


def default_loggers(default_root_dir: str | None) -> list[Any]:
    root = str(default_root_dir or ".")
    return [CSVLogger(root, name="csv"), TensorBoardLogger(root, name="tensorboard")]


class AttnzooCLI(LightningCLI):
    """LightningCLI with attnzoo's checkpointing, logging, recipes, predictions and errors (see the module doc)."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        for action in parser._actions:
            if "--config" in action.option_strings:
                action.help = CONFIG_HELP
        return parser

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        """``predict`` alone gets the CSV writer (``--predictions.path``, ``--predictions.top_k``); the
        predictions are not also kept in memory (the CLI would discard them)."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_lightning_class_args(PredictionWriter, "predictions")
            parser.set_defaults({"return_predictions": False})
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """``--config NAME`` becomes the path of the shipped recipe of that name (:func:`.recipes.resolve_config`)."""
        if args is None or isinstance(args, (list, tuple)):
            given = sys.argv[1:] if args is None else list(args)
            try:
                resolved = resolve_config_args(given)
            except RecipeError as error:
                raise CommandError(str(error)) from None
            self._given = resolved
            if resolved != given:
                if args is None:  # not passed on as ``args``: Lightning warns when both args and sys.argv are set
                    self.config = parser.parse_args(resolved)
                    return
                args = resolved
        else:
            self._given = args
        super().parse_arguments(parser, args)

    _given: Any = None  # the arguments as parsed: what the command and its YAML said, before defaults

    def _explicit_model_args(self, subcommand: str) -> set[str]:
        """The task arguments the command line or its YAML files set (parsed again, without defaults)."""
        if isinstance(self._given, (list, tuple)):
            explicit = self.parser.parse_args(list(self._given), defaults=False)
        else:
            explicit = self.parser.parse_object(self._given, defaults=False)
        init_args = explicit.get(f"{subcommand}.model.init_args")
        return set(vars(init_args)) if init_args is not None else set()

    def _parse_ckpt_path(self) -> None:
        """Fill in the task arguments the command left unset from ``--ckpt_path``'s hyper-parameters.

        Lightning's own version hands them to the parser over the command's values, so a checkpoint overrides
        explicit flags and has any ``class_path`` inside them built. Here they must be plain values (anything
        else ends the command, naming its key), explicit command-line and YAML values win, and a checkpoint of
        another task or network than the one asked for is an error naming both.
        """
        subcommand = self.config.get("subcommand")
        path = self._local_checkpoint(subcommand) if subcommand else None
        if path is None:
            return  # a URL or a missing file: Lightning reads its weights alone, or reports it
        try:
            saved = dict(load_checkpoint(path).get("hyper_parameters") or {})
        except (ValueError, FileNotFoundError) as error:
            raise CommandError(f"--ckpt_path {str(error).removeprefix('checkpoint: ')}") from None
        saved_class = saved.pop("_class_path", None)
        saved.pop("_instantiator", None)  # Lightning's, for load_from_checkpoint; never used here
        model = self.config[subcommand].get("model")
        if model is None or not saved:
            return
        requested = str(model.class_path)
        if saved_class is not None and str(saved_class).rsplit(".", 1)[-1] != requested.rsplit(".", 1)[-1]:
            raise CommandError(f"--ckpt_path {path} is a checkpoint of {saved_class}, not of the requested {requested}")
        current = vars(model.init_args)
        explicit = self._explicit_model_args(subcommand)
        fill = {}
        for key, value in saved.items():
            if key not in current or current[key] == value:
                continue
            if key not in explicit:
                fill[key] = value
            elif key in ARCHITECTURE_KEYS:
                raise CommandError(
                    f"model.init_args.{key}: --ckpt_path {path} holds a {value!r} network, not the requested "
                    f"{current[key]!r}; leave {key} out or give a checkpoint of {current[key]!r}"
                )
        if fill:
            update = {subcommand: {"model": {"class_path": requested, "init_args": fill}}}
            self.config = self.parser.parse_object(update, self.config)

    def _local_checkpoint(self, subcommand: str) -> Path | None:
        """The file ``--ckpt_path`` names (``last``: this run folder's ``last.ckpt``), ``None`` if it is no local
        file."""
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path:
            return None
        if ckpt_path == "last":
            root = self.config[subcommand].get("trainer.default_root_dir")
            path = Path(checkpoint_dir(root)) / "last.ckpt"
        else:
            path = Path(str(ckpt_path)).expanduser()
        return path if path.is_file() else None

    def instantiate_classes(self) -> None:
        """A task or data module refusing its arguments ends in one line naming it (:func:`argument_error`)."""
        try:
            super().instantiate_classes()
        except ValueError as error:
            debug = os.environ.get("JSONARGPARSE_DEBUG", "").lower() == "true"  # jsonargparse's own switch
            message = None if debug else argument_error(error)
            if message is None:
                raise
            raise CommandError(message) from error
        if self.datamodule is not None:
            guard_dataloaders(self.datamodule)  # workers ignore SIGTERM/SIGINT: the main process saves first
            kill_workers_at_exit()  # and so cannot be ended by multiprocessing's SIGTERM at exit

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_top_k": 1,
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.enable_version_counter": False,  # best.ckpt is always this run's, never best-v1.ckpt
            }
        )
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.monitor": None,
                "last_checkpoint.filename": "last",
                "last_checkpoint.save_top_k": 1,  # with no monitor: the latest state replaces the previous one
                "last_checkpoint.save_on_exception": True,
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit: start afresh in a run folder that holds an earlier run's checkpoints (they are deleted first)",
        )
        parser.add_argument(
            "--total_batch_size",
            type=int | None,
            default=None,
            help="images per optimizer step over all processes (the paper's total batch): "
            "trainer.accumulate_grad_batches follows from data.batch_size and the world size",
        )
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)
        parser.link_arguments("trainer.default_root_dir", "last_checkpoint.dirpath", compute_fn=checkpoint_dir)
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    _lock: IO | None = None

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """Every checkpoint is read without running code; ``fit`` claims its run folder; ``last`` must exist."""
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("weights_only") is False:
            raise CommandError(
                "--weights_only false would let a checkpoint execute code when it is read; attnzoo-train always reads "
                "checkpoints with weights_only=True"
            )
        kwargs["weights_only"] = True  # Lightning would unpickle a checkpoint URL with weights_only=False
        root = Path(self.trainer.default_root_dir)
        checkpoints = Path(checkpoint_dir(str(root)))
        if subcommand == "fit" and rank_zero_only.rank == 0:  # DDP's other ranks re-run this command in the folder
            overwrite = self.config_init[subcommand].get("overwrite", False)
            self._claim_run_folder(root, checkpoints, kwargs.get("ckpt_path"), overwrite)
        if kwargs.get("ckpt_path") == "last":
            last = checkpoints / "last.ckpt"
            if not last.is_file():
                raise CommandError(f"--ckpt_path last: there is no {last} to resume from")
            kwargs["ckpt_path"] = str(last)
        return kwargs

    def _claim_run_folder(self, root: Path, checkpoints: Path, ckpt_path: Any, overwrite: bool) -> None:
        """Lock the folder for this process (a second ``fit`` is refused) and keep earlier runs' files apart.

        The lock is an advisory ``flock`` on a file in the folder: the OS drops it when the process ends,
        however it ends, so a killed run never leaves the folder locked.
        """
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / LOCK_NAME, "a+")  # noqa: SIM115  (held until the command ends)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise CommandError(
                f"run folder {root} is in use by another attnzoo-train fit ({owner}); wait for it to finish or "
                "choose another --trainer.default_root_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._lock = handle
        remove_partial_writes(checkpoints)  # left by a writer that was killed
        earlier = sorted(checkpoints.glob("*.ckpt"))
        if earlier and not continues_run(ckpt_path, checkpoints):
            if not overwrite:
                self._release_run_folder()
                names = ", ".join(p.name for p in earlier)
                start = (
                    "continue it with --ckpt_path last"
                    if ckpt_path is None
                    else (f"--ckpt_path {ckpt_path} is not one of them (fit it into a new --trainer.default_root_dir)")
                )
                raise CommandError(
                    f"run folder {root} holds an earlier run's checkpoints ({names}); {start}, start afresh with "
                    "--overwrite true (deletes them), or choose another --trainer.default_root_dir"
                )
            for path in earlier:
                path.unlink()

    def _release_run_folder(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _run_subcommand(self, subcommand: str) -> None:
        """Runs it with the folder lock released at the end; an interrupted run exits with a shell's status for
        its signal (130 for Ctrl-C, 143 for SIGTERM), never 0 or 1 as Lightning's own handling would."""
        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException:  # Lightning's handler caught SIGTERM before StopOnSignal's was installed
            raise StopRequested(signal.SIGTERM) from None
        except SystemExit as error:
            if error.code == 1 and isinstance(error.__context__, KeyboardInterrupt):  # Lightning's Ctrl-C exit
                raise StopRequested(signal.SIGINT) from None
            raise
        finally:
            self._release_run_folder()

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        """Every trainer stops on SIGTERM/SIGINT at a batch boundary (:class:`~.signals.StopOnSignal`) and resumes
        with the command's optimizer settings (:class:`~.resume.CommandOptimizerSettings`)."""
        return super()._instantiate_trainer(config, [StopOnSignal(), CommandOptimizerSettings(), *callbacks])

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = default_loggers(trainer_config.get("default_root_dir"))
        if not trainer_config.get("plugins") and "plugins" not in kwargs:
            kwargs["plugins"] = [AtomicCheckpointIO()]
        if "precision" not in kwargs and runs_on_cpu(trainer_config.get("accelerator")):
            kwargs["precision"], note = cpu_precision(trainer_config.get("precision"))
            if note:
                rank_zero_info(note)
        trainer = super().instantiate_trainer(**kwargs)
        total = self._get(self.config_init, "total_batch_size")
        per_process = getattr(self.datamodule, "hparams", {}).get("batch_size")  # the data module's, per process
        if total is not None and per_process is not None:
            try:
                steps, note = accumulation(total, per_process, trainer.world_size, trainer.accumulate_grad_batches)
            except ValueError as error:
                raise CommandError(str(error)) from None
            trainer.accumulate_grad_batches = steps
            rank_zero_info(note)
        return trainer


def _register_classes() -> None:
    """Import what YAML refers to by short name: the tasks and data modules of ``attnzoo.train.__all__``."""
    import attnzoo.train

    for name in attnzoo.train.__all__:
        getattr(attnzoo.train, name)


def build_cli(args: list[str] | None = None, run: bool = True, **kwargs: Any) -> AttnzooCLI:
    """The CLI object (for tests and notebooks); ``main`` is the console script."""
    _register_classes()
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    kwargs.setdefault("parser_class", OneLineErrorParser)
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


def print_recipes(args: list[str]) -> None:
    """``attnzoo-train recipes [PATTERN]``: the shipped recipes whose names match PATTERN, one per line."""
    usage = "usage: attnzoo-train recipes [PATTERN]   (the names --config accepts, with a summary)"
    if args[:1] in (["-h"], ["--help"]):
        print(usage)
        return
    if len(args) > 1 or (args and args[0].startswith("-")):
        raise SystemExit(usage)
    lines = describe_recipes(args[0] if args else None)
    if not lines:
        raise SystemExit(f"attnzoo-train: error: no recipe name matches {args[0]!r}")
    print("\n".join(lines))


def main(args: list[str] | None = None) -> None:
    """Console script ``attnzoo-train``; returns ``None`` so that a successful run exits with status 0."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["recipes"]:
        print_recipes(argv[1:])
        return
    try:
        build_cli(args)
    except CommandError as error:
        raise SystemExit(f"attnzoo-train: error: {error}") from None


if __name__ == "__main__":
    main()
