"""What every program launched by launch.py shares: an output directory and its config files."""

from __future__ import annotations

from pathlib import Path

from mmgin import config_record, dist


class Program:
    """Base of launchable programs: subclasses are gin-configurable and implement `run()`.

    Constructing a program creates its output directory and (on rank 0) writes `config.gin`,
    the files and parameters exactly as parsed, so a run can always be traced to its inputs.
    `operative_config.gin`, the values used, is written once the program is built; a program
    that calls further configurables in `run()` (an optimizer, a codec) calls `record_config()`
    after them, so the record holds them even if the run stops early.
    """

    def __init__(self, output_dir: str | Path):
        if output_dir is None or str(output_dir) == "":
            raise ValueError(f"{type(self).__name__}.output_dir is empty; set OUTPUT_DIR")
        self.output_dir = Path(output_dir)
        if dist.is_main():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            config_record.write_parsed(self.output_dir / "config.gin")

    def record_config(self) -> None:
        """Rewrites `operative_config.gin` (rank 0); call it after building more configurables."""
        config_record.write_operative(self.output_dir)

    def run(self) -> None:
        raise NotImplementedError
