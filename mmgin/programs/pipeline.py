"""Several programs run one after another from one command (the example uses it), and
`join_path`, which composes their paths in gin so that one OUTPUT_DIR places every stage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import gin

from mmgin import dist, preemption
from mmgin.programs.base import Program, claimed


@gin.configurable
def join_path(root: str | Path = gin.REQUIRED, parts: Sequence[str] = ()) -> str:
    """`root/part/...`; use it scoped, e.g. `store/join_path.parts = ['stores', 'video-16k']`
    with `Stage.output_dir = @store/join_path()`."""
    if isinstance(parts, str):
        parts = [parts]
    return str(Path(root).joinpath(*parts))


@gin.configurable
class Pipeline(Program):
    """Runs program classes in order, building each only when its turn comes.

    Stages are bound without `()` (e.g. `Pipeline.stages = [@MakeExampleData, @Train]`), so a
    later stage is constructed after the earlier ones have written what it reads (a training
    stage opens the stores an extraction stage made). Use gin scopes for per-stage bindings:
    `@video/ExtractVideoFeatures` reads `video/ExtractVideoFeatures.output_dir = ...`.
    """

    def __init__(
        self,
        output_dir: str | Path = gin.REQUIRED,
        stages: Sequence[Callable[[], Program]] = gin.REQUIRED,
    ):
        super().__init__(output_dir)
        if not stages:
            raise ValueError("Pipeline.stages is empty; list the program classes to run")
        for stage in stages:
            if not callable(stage):
                raise ValueError(f"Pipeline stage {stage!r} is not a program class; bind it as @Name")
        self.stages = list(stages)

    def run(self) -> None:
        with preemption.sigterm_stops(preemption.DEFAULT_GRACE_SECONDS) as stop:  # the stages share it
            for index, make_stage in enumerate(self.stages, start=1):
                name = getattr(make_stage, "__name__", repr(make_stage))
                if stop.requested:  # the previous stage stopped early: the next would read unfinished outputs
                    dist.warn_main("pipeline stopped by SIGTERM before stage %d/%d (%s); %s", index,
                                   len(self.stages), name, preemption.RESUME)
                    return
                dist.log_main("pipeline stage %d/%d: %s", index, len(self.stages), name)
                start = time.perf_counter()
                stage = make_stage()
                if isinstance(stage, Program):
                    stage.build()
                with claimed(stage, within=self):  # its own lock and record; the pipeline's record holds it too
                    stage.run()
                dist.log_main("pipeline stage %s done in %.1f s", name, time.perf_counter() - start)
