"""What every program launched by launch.py shares: an output directory, its lock and config files."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from mmgin import config_record, dist, run_lock

CONFIG = "config.gin"


class Program:
    """Base of launchable programs: subclasses are gin-configurable and implement `run()`.

    Constructing a program and `build()` write nothing, so that `--dry_run` can build it (every
    configurable a run calls before its first step) beside a live run. A real run then goes
    through `claimed`, which locks the output, creates the directory and writes `config.gin`
    (the files and parameters exactly as parsed) and `operative_config.gin` (the values used,
    built ones included, so the record holds them even if the run stops at once).

    ``published_as`` is what the run finally makes of ``output_dir`` when that is a work
    directory (an extraction's ``<store>.partial`` becomes the store): the lock covers it.
    """

    def __init__(self, output_dir: str | Path, published_as: str | Path | None = None):
        if output_dir is None or str(output_dir) == "":
            raise ValueError(f"{type(self).__name__}.output_dir is empty; set OUTPUT_DIR")
        self.output_dir = Path(output_dir)
        self.published_as = Path(published_as) if published_as is not None else self.output_dir

    def build(self) -> None:
        """Builds what the run needs (networks, optimizers, loaders) without touching the output
        directory; the launcher calls it in dry and real runs alike, before `claimed`."""

    def run(self) -> None:
        raise NotImplementedError


@contextlib.contextmanager
def claimed(program: object, within: Program | None = None) -> Iterator[None]:
    """Holds a real run's built program's output for the block: rank 0 takes the output's lock,
    creates the directory and writes the config record, and every rank stops together if it
    could not (the output is another run's); after the block the record is completed (a program
    may call configurables while it runs), also that of the pipeline it runs `within`, and the
    lock released. A block that ends normally ends on every rank before anything that follows
    it (the next stage of a pipeline reads what this one wrote).

    A program without an output directory (it writes single files atomically) needs no lock.
    """
    if not isinstance(program, Program):
        yield
        dist.barrier()
        _record(within)
        return
    lock, failure = None, None
    if dist.is_main():
        try:
            lock = run_lock.acquire(program.published_as)
            program.output_dir.mkdir(parents=True, exist_ok=True)
            config_record.write_parsed(program.output_dir / CONFIG)
            config_record.write_operative(program.output_dir)
        except Exception as error:  # re-raised below, on every rank
            failure = error
    failure = dist.broadcast_object(failure)
    try:
        if failure is not None:
            raise failure
        yield
        dist.barrier()
        _record(program, within)
    finally:
        if lock is not None:
            run_lock.release(lock)


def _record(*programs: Program | None) -> None:
    for program in programs:
        if program is not None:
            config_record.write_operative(program.output_dir)
