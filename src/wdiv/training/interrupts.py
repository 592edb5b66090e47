"""SIGINT / SIGTERM (and submitit's preemption signal): stop at the next training step.

A handler only sets a flag; the training loop calls :func:`check` once per step and raises
:class:`Interrupted` there, so the last epoch's resume state on disk stays the truth and the
same command resumes from it. A second signal raises at once (a user pressing Ctrl-C twice).

Under submitit (``SUBMITIT_EXECUTOR`` set, e.g. hydra/launcher=slurm or submitit_local),
submitit has installed its own handler for its preemption signal (USR2 by default): it
checkpoints the job (hydra-submitit-launcher's ``checkpoint`` resubmits the same sweep job) and
requeues it. SLURM sends SIGTERM before that signal when it preempts, so there SIGTERM and the
preemption signal both stop the run first and then hand over to submitit's handler
(:meth:`Catcher.hand_over`); the requeued job reruns the same command, which resumes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

EXIT_BASE = 128  # a shell's exit status for "killed by signal N" is 128 + N


class Interrupted(Exception):
    """Raised at the next step after a stop signal; ``epoch`` is the last epoch finished."""

    def __init__(self, signum: int, epoch: int | None = None):
        self.signum = int(signum)
        self.epoch = epoch
        super().__init__(self.message())

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return EXIT_BASE + self.signum

    def message(self) -> str:
        return f"interrupted after epoch {self.epoch or 0}"

    def __str__(self) -> str:
        return self.message()


_requested: int | None = None  # the first signal received, while a Catcher is active


def requested() -> int | None:
    return _requested


def check() -> None:
    """Raise :class:`Interrupted` if a stop signal arrived (cheap: one global read per step)."""
    if _requested is not None:
        raise Interrupted(_requested)


def _handler(signum, frame) -> None:
    global _requested
    if _requested is not None:  # the second signal: stop now, wherever we are
        raise Interrupted(_requested)
    _requested = signum


def _submitit_signal():
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, name, None)


class Catcher:
    """What :func:`catch` installed; ``hand_over`` gives a preemption to submitit."""

    def __init__(self):
        self.previous: dict[int, object] = {}
        self.submitit_handler = None
        self.submitit_signum: int | None = None

    def hand_over(self, stop: Interrupted) -> None:
        """Under submitit, let its handler checkpoint and requeue the job (it exits the process).

        Only for SIGTERM and submitit's own signal: a SIGINT (Ctrl-C, or submitit's cancel)
        means "stop", not "come back later".
        """
        if self.submitit_handler is None or stop.signum == signal.SIGINT:
            return
        self.submitit_handler(self.submitit_signum, None)


@contextlib.contextmanager
def catch():
    """Install the stop handlers for the block (main thread only; elsewhere a no-op)."""
    global _requested
    catcher = Catcher()
    if threading.current_thread() is not threading.main_thread():
        yield catcher
        return
    signums = [signal.SIGINT, signal.SIGTERM]
    if os.environ.get("SUBMITIT_EXECUTOR"):
        sig = _submitit_signal()
        current = signal.getsignal(sig) if sig is not None else None
        if callable(current):
            catcher.submitit_handler, catcher.submitit_signum = current, sig
            signums.append(sig)
    _requested = None
    for signum in signums:
        catcher.previous[signum] = signal.signal(signum, _handler)
    try:
        yield catcher
    finally:
        for signum, old in catcher.previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
        _requested = None
