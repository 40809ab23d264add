"""SIGTERM as a request to stop at the next safe point, instead of at once.

SLURM, Kubernetes and torchelastic send SIGTERM some seconds before SIGKILL. While a program
holds `sigterm_stops()`, the first SIGTERM only sets a flag; the program looks at it where
stopping loses nothing (a training step boundary, an extraction block, an evaluation batch),
keeps its work and returns normally. The first SIGTERM also gives SIGTERM back its default
action, so a second one ends the process at once (as before this module), even while Python
cannot run handlers (a thread blocked in a collective); so does the grace period running out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import os
import signal
import threading
from typing import Iterator

import torch
import torch.distributed as torch_dist
from absl import logging

from mmgin import dist

RESUME = "run the same command to resume"
DEFAULT_GRACE_SECONDS = 120.0


@dataclasses.dataclass
class StopRequest:
    """Set by the first SIGTERM; the program reads it at its safe points."""

    requested: bool = False


def _grace_expired(grace_seconds: float) -> None:
    logging.error("did not stop within %.0f s of SIGTERM; stopping at once. Where it was:", grace_seconds)
    faulthandler.dump_traceback(all_threads=True)
    os.kill(os.getpid(), signal.SIGTERM)  # SIGTERM's default action: its disposition is SIG_DFL by now


_active: StopRequest | None = None  # the request of the outermost block


@contextlib.contextmanager
def sigterm_stops(grace_seconds: float) -> Iterator[StopRequest]:
    """Within the block, the first SIGTERM sets the yielded request instead of ending the process.

    Nested blocks (a Pipeline's stages) share the outermost block's request and grace period, so
    a stage that stopped stops the pipeline too. Python runs signal handlers in the main thread
    only: elsewhere nothing is installed and SIGTERM keeps its action.
    """
    global _active
    if _active is not None:
        yield _active
        return
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    timers: list[threading.Timer] = []

    def first_sigterm(signum: int, frame: object) -> None:  # runs once: SIGTERM is SIG_DFL after it
        del signum, frame
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        request.requested = True
        logging.warning("SIGTERM: stopping at the next safe point, within %.0f s (a second SIGTERM stops "
                        "at once)", grace_seconds)
        timer = threading.Timer(grace_seconds, _grace_expired, (grace_seconds,))
        timer.daemon = True
        timer.start()
        timers.append(timer)

    previous = signal.signal(signal.SIGTERM, first_sigterm)
    _active = request
    try:
        yield request
    finally:
        _active = None
        signal.signal(signal.SIGTERM, previous)
        for timer in timers:
            timer.cancel()


def ignore_sigterm_in_worker(worker_id: int) -> None:
    """DataLoader's worker_init_fn: torchrun and SLURM signal the whole process group, and a
    worker ended by SIGTERM fails its main process before that one reaches its safe point. The
    main process ends its workers itself; they also exit when it dies."""
    del worker_id
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StepVote:
    """Whether any rank was asked to stop, agreed by all ranks at every step boundary.

    Each boundary starts an all-reduce (MAX) of this rank's flag and reads the result of the
    previous boundary's, copied to the host behind the step's work: the host never waits for
    the step it has just queued, and every rank gets the same answer at the same iteration. So
    the run stops at the second boundary after the signal, one step later than it could.
    """

    def __init__(self, request: StopRequest, device: torch.device):
        self.request, self.device = request, device
        cuda = device.type == "cuda"
        self.host = torch.zeros(1, dtype=torch.int32, pin_memory=cuda)
        self.copied = torch.cuda.Event() if cuda else None

    def stop_agreed(self) -> bool:
        """Call at every step boundary on every rank: True once the ranks agreed to stop."""
        if self.copied is not None:
            self.copied.synchronize()
        agreed = bool(self.host.item())
        vote = torch.full((1,), int(self.request.requested), dtype=torch.int32, device=self.device)
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.all_reduce(vote, op=torch_dist.ReduceOp.MAX)  # on CUDA the stream waits, not the host
        self.host.copy_(vote, non_blocking=True)
        if self.copied is not None:
            self.copied.record()
        return agreed


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any (blocking; for the end of a loop)."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return flag
    vote = torch.full((1,), int(flag), dtype=torch.int32, device=dist.info().device)
    torch_dist.all_reduce(vote, op=torch_dist.ReduceOp.MAX)
    return bool(vote.item())
