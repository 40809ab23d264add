"""Paths composed in gin, so one OUTPUT_DIR macro can place every stage of a pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import gin


@gin.configurable
def join_path(root: str | Path = gin.REQUIRED, parts: Sequence[str] = ()) -> str:
    """`root/part/...`; use it scoped, e.g. `store/join_path.parts = ['stores', 'video-16k']`
    with `Stage.output_dir = @store/join_path()`."""
    if isinstance(parts, str):
        parts = [parts]
    return str(Path(root).joinpath(*parts))
