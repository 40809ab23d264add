"""No pickle execution from checkpoints: every torch.load in the project is weights-only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("scenario")
REPO = Path(__file__).resolve().parents[2]
SCANNED = ["launch.py", "mmgin", "bench", "tests"]


def python_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = REPO / entry
        files.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    return files


def is_torch_load(call: ast.Call) -> bool:
    func = call.func
    return (isinstance(func, ast.Attribute) and func.attr == "load"
            and isinstance(func.value, ast.Name) and func.value.id == "torch")


def unsafe_load_lines(source: str) -> list[int]:
    """Lines of torch.load calls that do not pass the literal weights_only=True."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and is_torch_load(node):
            if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                       and k.value.value is True for k in node.keywords):
                lines.append(node.lineno)
    return sorted(lines)


def test_scanner_flags_unsafe_loads():
    source = ("import torch\nx = torch.load('a')\ny = torch.load('b', weights_only=True)\n"
              "z = torch.load('c', weights_only=False)\n")
    assert unsafe_load_lines(source) == [2, 4]


def test_every_torch_load_is_weights_only():
    offenders = [f"{path.relative_to(REPO)}:{line}"
                 for path in python_files() for line in unsafe_load_lines(path.read_text())]
    assert offenders == [], f"torch.load without weights_only=True: {offenders}"


# ------------------------------------------------------------------ ids used as file names
# Ids and captions come from user tables. Where a program names a file after an id, the id
# must never lead outside the output folder, and distinct ids must give distinct files.
def hostile_ids(root: Path) -> list[str]:
    return ["../../evil", "../../../../escaped", str(root / "abs" / "path"), "a/b", "back\\slash", "con",
            "", ".", "..", "50%", "ü 🎵 名前", "x" * 300, "video_000"]


def write_store_with_ids(path: Path, ids: list[str], duration: float = 8.0) -> Path:
    """A finished 16 kHz video store of random features (clips of ``duration``) whose rows
    carry ``ids``."""
    import torch

    from mmgin.data.store import StoreFormat
    from mmgin.data.store_writer import Plan, PlannedRow, StoreWriter
    from mmgin.model import SequenceConfig

    seq = SequenceConfig.for_mode("16k", duration)
    latent = (seq.latent_seq_len, seq.latent_dim)
    shapes = {"mean": latent, "std": latent, "clip_features": (seq.clip_seq_len, 1024),
              "sync_features": (seq.sync_seq_len, 768)}
    rows = [PlannedRow({"id": item, "label": f"label {n}"}, f"label {n}", f"{n}.mp4") for n, item in enumerate(ids)]
    plan = Plan(("id", "label"), rows, shapes, (77, 1024), StoreFormat())
    generator = torch.Generator().manual_seed(0)
    features = {k: torch.randn((len(ids),) + s, generator=generator) for k, s in shapes.items()}
    features["std"] = features["std"].abs() + 0.1
    writer = StoreWriter(path, plan)
    writer.prepare()
    writer.open()
    writer.write_text(list(range(len(plan.captions))), torch.randn((len(plan.captions), 77, 1024), generator=generator))
    writer.write_rows(list(range(len(ids))), features)
    writer.close()
    writer.finalize()
    return path


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_training_samples_named_by_hostile_ids_stay_in_the_samples_folder(example_workspace, tmp_path):
    from .harness import TRAIN_FILES, run_in_process, train_params

    work = tmp_path / "one" / "two" / "three" / "four"
    ids = hostile_ids(tmp_path)
    store = write_store_with_ids(work / "stores" / "hostile", ids)
    out = work / "run"
    params = train_params(example_workspace, out, **{
        "VAL_STORE": str(store), "Train.codec": "@train/AudioCodec()", "Train.num_iterations": 1,
        "SamplingConfig.every": 1, "SamplingConfig.num_samples": len(ids), "SamplingConfig.batch_size": len(ids),
        "ValidationConfig.every": 1000, "Train.ema": None})
    run_in_process(TRAIN_FILES, [p.replace("'@train/AudioCodec()'", "@train/AudioCodec()") for p in params])
    samples = out / "samples" / "000000001"
    written = [p for p in files_under(tmp_path) if p.suffix == ".flac"]
    assert all(p.parent == samples for p in written), sorted(map(str, written))
    assert len(written) == len(ids)
    assert (samples / "video_000.flac").is_file()  # a plain id keeps its name


def test_evaluation_outputs_named_by_hostile_ids_stay_in_their_folders(example_workspace, tmp_path):
    import torch

    from mmgin import io
    from mmgin.model import get_network

    from .harness import run_in_process

    work = tmp_path / "one" / "two" / "three" / "four"
    ids = hostile_ids(tmp_path)
    store = write_store_with_ids(work / "stores" / "hostile", ids, duration=2.0)  # 2 s: cheaper to generate
    sources = work / "sources" / "videos"
    video = example_workspace / "videos" / "video_000.mp4"
    # Videos where a lookup joining the id to the folder would find (and mux) them.
    for target in (sources / "video_000.mp4", sources / "a" / "b.mp4", sources / "../../evil.mp4"):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(video.read_bytes())
    network = get_network("tiny_16k", latent_mean=torch.zeros(20), latent_std=torch.full((20,), 0.5),
                          empty_string_feat=torch.zeros(77, 1024))
    weights = tmp_path / "mmaudio_tiny_16k.pth"
    io.save_torch(network.state_dict(), weights)
    out = work / "eval"
    before = files_under(tmp_path)
    run_in_process(["gin/evaluate_16k.gin", "gin/audio/tiny.gin", "gin/test/tiny_encoders.gin"],
                   ["NETWORK = 'tiny_16k'", "FlowMatching.num_steps = 1", f"Evaluate.batch_size = {len(ids)}",
                    "Evaluate.duration = 2.0",
                    f"WEIGHTS = '{weights}'", f"OUTPUT_DIR = '{out}'", f"STORE = '{store}'",
                    f"SOURCE_VIDEOS = '{sources}'"])
    new = files_under(tmp_path) - before
    assert all(out in p.parents for p in new), sorted(str(p) for p in new if out not in p.parents)
    flacs = [p for p in new if p.suffix == ".flac"]
    assert len(flacs) == len(ids) and all(p.parent == out / "test-sampled" for p in flacs)
    mp4s = sorted(p.relative_to(out) for p in new if p.suffix == ".mp4")
    assert mp4s == [Path("test-sampled-videos/video_000.mp4")], mp4s


def test_safe_file_names_are_plain_distinct_and_short(tmp_path):
    from mmgin.io import safe_file_name

    ids = hostile_ids(tmp_path) + ["%", "%25", "%2E", "a%2Fb", "a\nb", "x" * 301, "é" * 150, "-rf", ".hidden"]
    names = [safe_file_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    for item, name in zip(ids, names):
        assert name not in ("", ".", "..") and "/" not in name and "\\" not in name and name.isprintable()
        assert len(name.encode()) <= 200 and (tmp_path / name).parent == tmp_path
        (tmp_path / f"{name}.flac").write_bytes(b"")  # the file system takes it
    assert safe_file_name("video_000") == "video_000" and safe_file_name("ü 🎵 名前") == "ü 🎵 名前"
    assert len(list(tmp_path.iterdir())) == len(ids)
