"""Example workspaces for tests, the example run and benchmarks.

``build_example_workspace(root)`` runs the real programs (MakeExampleData, PartitionClips and
both extractions with tiny encoders, through the launcher's in-process API) and leaves::

    root/
      videos/video_000.mp4 ...       4 mp4s (h264 160x120 25 fps + AAC 44.1 kHz mono, 8.6 s)
      audios/audio_000.flac ...      2 flacs (44.1 kHz mono, 17.5 s: two clips each)
      video.tsv                      id, label           (one row per video)
      captions.tsv                   id, caption         (one row per flac, id = file stem)
      clips.tsv                      id, name, start_sample, end_sample   (4 clips)
      stores/video-16k/ + stores/video-16k.tsv (id, label)      16 kHz video store, 4 rows
      stores/audio-16k/ + stores/audio-16k.tsv (id, caption)    16 kHz audio store, 4 rows
      stores/*.failures.tsv          id, path, reason (header only: the example has no bad media)
      clips.failures.tsv, clips.config.gin, clips.operative_config.gin, config.gin, ...
                                     run records (each store also keeps its config.gin inside)

Stores use the default format (bfloat16 features, deduplicated text); read them with
``mmgin.data.ExtractedVideoDataset(store=...)`` / ``ExtractedAudioDataset`` or
``mmgin.data.store.FeatureStore.open``. ``write_synthetic_store`` makes stores of random
features directly, for tests that need sizes or layouts the example does not have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mmgin.data import null_text
from mmgin.data.store import StoreFormat
from mmgin.data.store_writer import Plan, PlannedRow, StoreWriter
from mmgin.model.sequence import CLIP_DIM, SYNC_DIM, TEXT_SHAPE

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_ENCODERS = "gin/test/tiny_encoders.gin"


def build_example_workspace(root: str | Path, num_workers: int = 1) -> Path:
    """Builds the workspace described in the module docstring under ``root``; returns root."""
    from mmgin import cli

    root = Path(root)
    search = [str(REPO_ROOT)]
    stores = root / "stores"
    runs = [
        (["gin/make_example_data.gin"], [f"OUTPUT_DIR = '{root}'"]),
        (["gin/partition_clips.gin"], [f"AUDIO_DIR = '{root / 'audios'}'", f"OUTPUT_DIR = '{root / 'clips.tsv'}'"]),
        (
            ["gin/extract_video_16k.gin", TINY_ENCODERS],
            [f"VIDEO_DIR = '{root / 'videos'}'", f"VIDEO_TSV = '{root / 'video.tsv'}'",
             f"OUTPUT_DIR = '{stores / 'video-16k'}'", f"ExtractVideoFeatures.num_workers = {num_workers}",
             # small blocks: the worker decodes the next videos while the encoders run
             "ExtractVideoFeatures.batch_size = 2"],
        ),
        (
            ["gin/extract_audio_16k.gin", TINY_ENCODERS],
            [f"AUDIO_DIR = '{root / 'audios'}'", f"CAPTIONS_TSV = '{root / 'captions.tsv'}'",
             f"CLIPS_TSV = '{root / 'clips.tsv'}'", f"OUTPUT_DIR = '{stores / 'audio-16k'}'",
             f"ExtractAudioFeatures.num_workers = {num_workers}"],
        ),
    ]
    for files, params in runs:
        cli.run(files, params, search, dry_run=False)
    return root


def train_params(workspace: str | Path, out: str | Path, **overrides: object) -> list[str]:
    """``--gin_param`` bindings for a tiny training run on the workspace's example stores
    (with gin/small_16k.gin + gin/test/tiny_train.gin), single-threaded so runs compare bit
    for bit; ``overrides`` add or replace bindings."""
    stores = Path(workspace) / "stores"
    params = {
        "VIDEO_STORES": [str(stores / "video-16k")],
        "AUDIO_STORES": [str(stores / "audio-16k")],
        "VAL_STORE": str(stores / "video-16k"),
        "OUTPUT_DIR": str(out),
        "training_mixture.video_oversample": 1,
        "StepConfig.num_threads": 1,
    }
    params.update(overrides)
    return [f"{k} = {v!r}" for k, v in params.items()]


def write_synthetic_store(
    path: str | Path,
    kind: str,
    num_rows: int,
    latent_shape: tuple[int, int] = (250, 20),
    captions: Sequence[str] | None = None,
    store_format: StoreFormat | None = None,
    seed: int = 0,
    id_prefix: str | None = None,
    overwrite: bool = False,
    null_text_seed: int | None = 0,
) -> dict[str, torch.Tensor]:
    """A finished store of random features (``kind`` 'video' or 'audio'); returns the float32
    features per row (text per row), as written before any storage-dtype rounding.

    The store records a random null text drawn from ``null_text_seed`` (one value for every
    store by default, as if one text encoder made them all); None writes no record."""
    generator = torch.Generator().manual_seed(seed)
    captions = list(captions) if captions is not None else [f"caption {i % 3}" for i in range(num_rows)]
    prefix = id_prefix if id_prefix is not None else f"{kind}{seed}_"
    column = "label" if kind == "video" else "caption"
    rows = [PlannedRow({"id": f"{prefix}{i:04d}", column: captions[i]}, captions[i], f"{prefix}{i}.src")
            for i in range(num_rows)]
    shapes = {"mean": latent_shape, "std": latent_shape}
    if kind == "video":
        shapes.update(clip_features=(64, CLIP_DIM), sync_features=(192, SYNC_DIM))
    plan = Plan(("id", column), rows, shapes, TEXT_SHAPE, store_format or StoreFormat())
    features = {k: torch.randn((num_rows,) + s, generator=generator) for k, s in shapes.items()}
    distinct = plan.captions
    table = torch.randn((len(distinct), *TEXT_SHAPE), generator=generator)
    features["text_features"] = table[[distinct.index(c) for c in captions]]
    writer = StoreWriter(path, plan)
    writer.prepare()
    writer.open()
    writer.write_text(list(range(len(distinct))), table)
    writer.write_rows(list(range(num_rows)), features)
    writer.close()
    if null_text_seed is not None:
        null_generator = torch.Generator().manual_seed(null_text_seed)
        null_text.write(writer.work, torch.randn((1, *TEXT_SHAPE), generator=null_generator))
    writer.finalize(overwrite)
    return features
