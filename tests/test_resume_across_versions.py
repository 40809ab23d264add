"""A checkpoint written by an earlier mmgin resumes to the same bits: the checkpoint format and
the numerics are a contract across refactors, not just within one version.

tests/fixtures/resume_v0/ holds `ckpt_000000003.pth.xz`, written by commit 439cdf5 (before the
Train program was split into components) in a 6-step tiny run on synthetic stores, and the
digest of every tensor and value of that run's checkpoint at iteration 6. This version resumes
the run from iteration 3 and must write the same checkpoint at 6 (its config text aside).
"""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path
from typing import Any

import torch

from mmgin import cli, io
from mmgin.testing.example import write_synthetic_store
from mmgin.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "resume_v0"
NOT_COMPARED = ("config",)  # the operative config's text names this version's settings


def digest(value: Any) -> Any:
    """A JSON-able fingerprint of a checkpoint value: tensors by dtype, shape and bytes."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return f"{value.dtype}{tuple(value.shape)}:{hashlib.sha256(data).hexdigest()[:16]}"
    if isinstance(value, dict):
        return {str(k): digest(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [digest(v) for v in value]
    return repr(value)


def checkpoint_digest(path: Path) -> dict[str, Any]:
    state = io.load_torch(path)
    return {k: digest(v) for k, v in state.items() if k not in NOT_COMPARED}


def write_stores(root: Path) -> dict[str, Any]:
    stores = root / "stores"
    write_synthetic_store(stores / "video-16k", "video", 6, seed=1)
    write_synthetic_store(stores / "audio-16k", "audio", 4, seed=2)
    write_synthetic_store(stores / "val-16k", "video", 2, seed=3)
    return {"VIDEO_STORES": [str(stores / "video-16k")], "AUDIO_STORES": [str(stores / "audio-16k")],
            "VAL_STORE": str(stores / "val-16k")}


def test_a_checkpoint_of_the_previous_version_resumes_to_the_same_bits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / ckpt.CHECKPOINT_DIR).mkdir(parents=True)
    (out / ckpt.CHECKPOINT_DIR / "ckpt_000000003.pth").write_bytes(
        lzma.decompress((FIXTURE / "ckpt_000000003.pth.xz").read_bytes()))
    params = {
        **write_stores(tmp_path), "OUTPUT_DIR": str(out), "training_mixture.video_oversample": 1,
        "get_network.hidden_dim": 8, "get_network.depth": 2, "Train.codec": None,
        "Train.batch_size": 2, "Train.num_iterations": 6, "StepConfig.num_threads": 1,
        "StepConfig.deterministic": True, "CheckpointConfig.every": 3, "ValidationConfig.every": 3,
        "SamplingConfig.every": 1000, "EMAConfig.snapshot_every": 2,
    }
    cli.run(["gin/small_16k.gin", "gin/test/tiny_train.gin"], [f"{k} = {v!r}" for k, v in params.items()],
            [str(REPO)], dry_run=False)
    expected = json.loads((FIXTURE / "ckpt_000000006.digest.json").read_text())
    assert checkpoint_digest(ckpt.checkpoint_path(out, 6)) == expected
