"""What every program launched by launch.py shares: an output directory, its lock and config files."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from mmgin import config_record, dist, run_lock

CONFIG = "config.gin"


class Program:
    """Base of launchable programs: subclasses are gin-configurable and implement `run()`.

    Constructing a program writes nothing, so that `--dry_run` can build it beside a live run.
    A real run goes through `claimed`, which locks the output, creates the directory and writes
    `config.gin` (the files and parameters exactly as parsed) and `operative_config.gin` (the
    values used). A program that calls further configurables in `run()` (an optimizer, a codec)
    calls `record_config()` after them, so the record holds them even if the run stops early.

    ``published_as`` is what the run finally makes of ``output_dir`` when that is a work
    directory (an extraction's ``<store>.partial`` becomes the store): the lock covers it.
    """

    def __init__(self, output_dir: str | Path, published_as: str | Path | None = None):
        if output_dir is None or str(output_dir) == "":
            raise ValueError(f"{type(self).__name__}.output_dir is empty; set OUTPUT_DIR")
        self.output_dir = Path(output_dir)
        self.published_as = Path(published_as) if published_as is not None else self.output_dir

    def record_config(self) -> None:
        """Rewrites `operative_config.gin` (rank 0); call it after building more configurables."""
        config_record.write_operative(self.output_dir)

    def run(self) -> None:
        raise NotImplementedError


@contextlib.contextmanager
def claimed(program: object) -> Iterator[None]:
    """Holds a real run's output for the block: rank 0 takes the output's lock, creates the
    directory and writes the config record, and every rank stops together if it could not (the
    output is another run's); after the block the record is completed and the lock released.
    A block that ends normally ends on every rank before anything that follows it (the next
    stage of a pipeline reads what this one wrote).

    A program without an output directory (it writes single files atomically) needs no lock.
    """
    if not isinstance(program, Program):
        yield
        dist.barrier()
        return
    lock, failure = None, None
    if dist.is_main():
        try:
            lock = run_lock.acquire(program.published_as)
            program.output_dir.mkdir(parents=True, exist_ok=True)
            config_record.write_parsed(program.output_dir / CONFIG)
            program.record_config()
        except Exception as error:  # re-raised below, on every rank
            failure = error
    failure = dist.broadcast_object(failure)
    try:
        if failure is not None:
            raise failure
        yield
        dist.barrier()
        program.record_config()  # a stage may call configurables while it runs
    finally:
        if lock is not None:
            run_lock.release(lock)
