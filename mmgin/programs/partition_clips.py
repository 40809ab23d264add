"""PartitionClips: long audio files -> a clip table (id, name, start_sample, end_sample).

The rule (FACTS §9.2): at the file's own sample rate, a file shorter than 8.1 s is skipped;
otherwise it gets n = min(5, total // seg) clips of seg = int(rate * 8.1) samples, spread
evenly from the start to near the end (clip i starts at i * ((total - seg) // (n - 1))).
Files are ``sorted(listdir)[start:end]`` (end = -1: to the last), so a big folder can be cut
into shards run separately; under torchrun the ranks share the files and rank 0 writes.
"""

from __future__ import annotations

import time
from pathlib import Path

import gin
from torch.utils.data import DataLoader, Dataset

from mmgin import dist
from mmgin.data import tsv as tsv_io
from mmgin.data.store import CLIP_COLUMNS
from mmgin.data.store_writer import FAILURE_COLUMNS
from mmgin.media.audio import decode_audio
from mmgin.media.errors import MediaError
from mmgin.programs.base import Program


def audio_length(path: str | Path) -> tuple[int, int]:
    """(number of samples, sample rate) of the first audio stream at its native rate."""
    decoded = decode_audio(path)
    return decoded.num_frames, decoded.sample_rate


def clip_spans(total: int, rate: int, seconds: float = 8.1, max_clips: int = 5) -> list[tuple[int, int]]:
    """[start, end) sample spans of the clips of a file of ``total`` samples at ``rate``."""
    if total < rate * seconds:
        return []
    seg = int(rate * seconds)
    count = min(max_clips, total // seg)
    interval = (total - seg) // (count - 1) if count > 1 else 0
    return [(i * interval, i * interval + seg) for i in range(count)]


class _LengthDataset(Dataset):
    """Item i: (i, (samples, rate)) or (i, (reason, message)) for file i; runs in workers."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, audio_length(self.paths[index]), None
        except MediaError as error:
            return index, None, (error.reason, str(error))


@gin.configurable
class PartitionClips(Program):
    """Writes the clip table ``output_dir`` (a .tsv file) for the audio files in ``audio_dir``.

    Files that cannot be used are listed in ``<table stem>.failures.tsv`` beside the table
    (id = file stem, path, reason); the configs of the run are kept as
    ``<table stem>.config.gin`` and ``<table stem>.operative_config.gin``.
    """

    def __init__(
        self,
        output_dir: str | Path = gin.REQUIRED,
        audio_dir: str | Path = gin.REQUIRED,
        start: int = 0,
        end: int = -1,
        clip_seconds: float = 8.1,
        max_clips: int = 5,
        num_workers: int = 8,
    ):
        self.table = Path(output_dir)
        if self.table.suffix != ".tsv":
            raise ValueError(f"PartitionClips.output_dir={self.table} must name the clip table, a .tsv file")
        super().__init__(self.table.with_name(f"{self.table.stem}.partial"), published_as=self.table)
        self.audio_dir = Path(audio_dir)
        self.start, self.end = start, end
        self.clip_seconds, self.max_clips = clip_seconds, max_clips
        self.num_workers = num_workers

    def _files(self) -> list[Path]:
        if not self.audio_dir.is_dir():
            raise FileNotFoundError(f"AUDIO_DIR {self.audio_dir} is not a directory; set AUDIO_DIR")
        names = sorted(p.name for p in self.audio_dir.iterdir())
        end = len(names) if self.end == -1 else self.end
        return [self.audio_dir / n for n in names[self.start:end] if (self.audio_dir / n).is_file()]

    def run(self) -> None:
        begin = time.perf_counter()
        files = self._files()
        mine = list(range(dist.rank(), len(files), dist.world_size()))
        loader = DataLoader(
            _LengthDataset([files[i] for i in mine]), batch_size=None,
            num_workers=min(self.num_workers, len(mine)),
        )
        results = [(mine[i], length, failure) for i, length, failure in loader]
        gathered = sorted(r for part in dist.all_gather_objects(results) for r in part)
        if dist.is_main():
            self._write(files, gathered, time.perf_counter() - begin)
        dist.barrier()

    def _write(self, files: list[Path], results: list, seconds: float) -> None:
        clips, failures = [], []
        for index, length, failure in results:
            path = files[index]
            if failure is not None:
                failures.append({"id": path.stem, "path": str(path), "reason": failure[0]})
                continue
            spans = clip_spans(*length, self.clip_seconds, self.max_clips)
            if not spans:
                failures.append({"id": path.stem, "path": str(path), "reason": "too_short"})
            for i, (start, end) in enumerate(spans):
                clips.append({"id": f"{path.stem}_{i}", "name": path.stem, "start_sample": start, "end_sample": end})
        tsv_io.write_table(self.table, CLIP_COLUMNS, clips)
        failure_report = self.table.with_name(f"{self.table.stem}.failures.tsv")
        tsv_io.write_table(failure_report, FAILURE_COLUMNS, failures)
        for name in ("config.gin", "operative_config.gin"):
            source = self.output_dir / name
            if source.is_file():
                source.replace(self.table.with_name(f"{self.table.stem}.{name}"))
        if self.output_dir.is_dir() and not any(self.output_dir.iterdir()):
            self.output_dir.rmdir()
        dist.log_main("wrote %s: %d clips from %d files in %.1f s; %d files skipped (see %s)",
                      self.table, len(clips), len(files), seconds, len(failures), failure_report)
