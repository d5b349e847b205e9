"""SIGTERM and SIGINT stop a run at the end of the current batch, with ``last.ckpt`` saved and a shell's exit status.

What schedulers and shells send (``kill -- -PGID``, ``scancel``, systemd, Ctrl-C) reaches every process of the
group: the main process and its DataLoader workers. Left alone, the workers die at once, the main process fails
inside whatever it is doing (a ``torch.save`` included) and Lightning's own SIGTERM handling exits 0, like a
finished run. Here:

* workers ignore both signals (:func:`ignore_stop_signals`, put into every DataLoader the data module returns by
  :func:`guard_dataloaders`; a worker forked before that ignores them through the main process's handler), so
  they keep serving batches until the main process shuts them down;
* the main process (:class:`StopOnSignal`) notes the signal and raises :class:`StopRequested` at the end of the
  current batch (training, validation, test or predict), where the state is consistent; Lightning then runs the
  ``on_exception`` hooks (``last.ckpt`` is written, a predict's part file removed) and tears the loaders down.
  A stop during a fit's validation (or right before it) is saved as a validation not yet run, so that
  ``--ckpt_path last`` repeats it whole instead of skipping it;
* the process exits ``128 + signal`` (143 for SIGTERM, 130 for SIGINT). A second signal stops at once, with the
  signal's default action (the last checkpoint on disk is still whole: writes are atomic). Workers still alive at
  exit are killed (:func:`kill_workers_at_exit`): multiprocessing would wait for them forever.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit hook now, so that ours (registered later) runs first
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

__all__ = [
    "STOP_SIGNALS",
    "StopOnSignal",
    "StopRequested",
    "guard_dataloaders",
    "ignore_stop_signals",
    "kill_workers_at_exit",
    "validation_follows",
]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HOOKS = ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader")


class StopRequested(SystemExit):
    """A stop signal ended the run at a batch boundary; the exit status is the shell's for that signal."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """DataLoader ``worker_init_fn``: a worker ignores SIGTERM/SIGINT, so a signal to the process group cannot kill
    it while the main process still needs batches or is writing the checkpoint."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _chain(original: Callable[[int], Any] | None) -> Callable[[int], Any]:
    """``ignore_stop_signals`` first, then the loader's own ``worker_init_fn`` (seeding, ...)."""
    if getattr(original, "_ignores_stop_signals", False):
        return original  # already guarded

    def worker_init(worker_id: int) -> None:
        ignore_stop_signals(worker_id)
        if original is not None:
            original(worker_id)

    worker_init._ignores_stop_signals = True  # type: ignore[attr-defined]
    return worker_init


def _guard_loader(loader: Any) -> Any:
    """Put :func:`ignore_stop_signals` into one DataLoader (and into the arguments Lightning re-creates it from
    when it adds a distributed sampler). Anything that is not a DataLoader is returned as it is."""
    if isinstance(loader, (list, tuple)):
        return type(loader)(_guard_loader(item) for item in loader)
    if isinstance(loader, dict):
        return {key: _guard_loader(item) for key, item in loader.items()}
    if getattr(loader, "num_workers", 0) and hasattr(loader, "worker_init_fn"):
        loader.worker_init_fn = _chain(loader.worker_init_fn)
        saved = getattr(loader, "__pl_saved_kwargs", None)
        if isinstance(saved, dict):
            saved["worker_init_fn"] = loader.worker_init_fn
    return loader


def guard_dataloaders(datamodule: Any) -> None:
    """Wrap the data module's ``*_dataloader`` methods so that every loader they return has workers that ignore
    stop signals (the data modules need not know; the wrapper is set on the instance)."""
    for name in _HOOKS:
        method = getattr(datamodule, name, None)
        if method is None or getattr(method, "_guards_workers", False):
            continue

        @functools.wraps(method)
        def guarded(*args: Any, _method: Callable[..., Any] = method, **kwargs: Any) -> Any:
            return _guard_loader(_method(*args, **kwargs))

        guarded._guards_workers = True  # type: ignore[attr-defined]
        setattr(datamodule, name, guarded)


def _kill_daemon_children() -> None:
    """SIGKILL the daemonic children still alive at exit: DataLoader workers a run that ended in an exception left
    behind. multiprocessing's own exit hook ends daemonic children with SIGTERM and then waits for them; workers
    ignore SIGTERM here, so it would wait forever. torch's SIGCHLD check is off meanwhile: these deaths are no
    loading error."""
    children = [p for p in multiprocessing.active_children() if p.daemon]
    if not children or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        for child in children:
            child.kill()
        for child in children:
            child.join(timeout=10)
    finally:
        signal.signal(signal.SIGCHLD, previous)


_exit_hook_registered = False


def kill_workers_at_exit() -> None:
    """Register :func:`_kill_daemon_children` to run at exit, before multiprocessing's hook (registered earlier, run
    later) and after torch's shutdown of persistent workers (registered later, run earlier); once per process."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_kill_daemon_children)
        _exit_hook_registered = True


class StopOnSignal(Callback):
    """Turns SIGTERM/SIGINT into :class:`StopRequested` at the end of the current batch (see the module doc).

    The handlers are installed when a loop starts, after Lightning installed its own SIGTERM handler (which would
    end the run with status 0), and the previous ones are restored at teardown.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._pid: int | None = None
        self._previous: dict[int, Any] = {}

    # --- handlers ----------------------------------------------------------------------------------
    def install(self, trainer: Trainer | None = None) -> None:
        """Handle both signals in this (main) process from now on. Called as each loop starts: after Lightning's
        own handler was installed (it is replaced; Lightning restores the original handlers at its teardown)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._pid = os.getpid()
        for signum in STOP_SIGNALS:
            current = signal.getsignal(signum)
            if current != self._handle:
                self._previous[signum] = current
                signal.signal(signum, self._handle)
        if self.signum is None and trainer is not None and trainer.received_sigterm:
            self.signum = signal.SIGTERM  # caught by Lightning's handler before this one was installed

    def uninstall(self) -> None:
        """Put back the handlers found at :meth:`install`, where this one is still installed."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        """First signal: stop at the next batch boundary. Second: the default action, now. A forked child (a
        DataLoader worker before its ``worker_init_fn`` ran) ignores it: the main process decides."""
        if os.getpid() != self._pid:
            return
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        name = signal.Signals(signum).name
        rank_zero_info(f"{name}: stopping after the current batch, saving last.ckpt (send it again to stop at once)")

    def check(self, trainer: Trainer, agree: bool = True) -> None:
        """Raise :class:`StopRequested` if a stop signal arrived (under DDP and ``agree``: at any rank, so all stop
        together). ``predict`` does not agree: Lightning splits its data unevenly (no padding), so the ranks run
        different numbers of batches and a per-batch collective would wait forever; each rank stops on its own
        signal (a signal to the process group reaches every rank)."""
        stop = self.signum is not None
        if agree and trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            raise StopRequested(self.signum or signal.SIGTERM)

    # --- Lightning hooks ---------------------------------------------------------------------------
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.install(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.install(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.install(trainer)
        if not trainer.sanity_checking:
            self.check(trainer)  # where a stop deferred by on_train_batch_end lands

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.install(trainer)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.install(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if not validation_follows(trainer):  # else stop when it starts: see _restart_validation_on_resume
            self.check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check(trainer)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.check(trainer)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.check(trainer)

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.check(trainer, agree=False)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Runs before the checkpoint callbacks save on the exception (they come last)."""
        if trainer.state.fn == TrainerFn.FITTING and trainer.validating and not trainer.sanity_checking:
            _restart_validation_on_resume(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.uninstall()


def validation_follows(trainer: Trainer) -> bool:
    """Whether the fit validates right after this training batch (asked in ``on_train_batch_end``).

    A checkpoint written at that point resumes past the validation (Lightning counts the epoch as done), so a stop
    there waits for the validation to start and is taken as a stop during validation."""
    loop = trainer.fit_loop.epoch_loop
    fetcher = trainer.fit_loop._data_fetcher
    return fetcher is not None and loop._should_check_val_fx(fetcher)


def _restart_validation_on_resume(trainer: Trainer) -> None:
    """Mark the running validation as started with no batch done, so that the checkpoint about to be written resumes
    into the whole validation (Lightning's "restarted mid-evaluation"), not past it: its metrics are not in the
    checkpoint, so a validation cannot be continued, only repeated."""
    progress = trainer.fit_loop.epoch_loop.val_loop.batch_progress
    done_before = progress.total.completed - progress.current.completed
    for tracker, count in ((progress.total, done_before), (progress.current, 0)):
        tracker.ready = tracker.started = count + 1
        tracker.processed = tracker.completed = count
    progress.is_last_batch = False
