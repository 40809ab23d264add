"""Run state is safe by construction (issue 17): retention never deletes the newest usable
checkpoint and sets unusable ones aside; a run never starts over on checkpoints it cannot use;
EMA synthesis never mixes two runs; settings a checkpoint holds apply on resume; bad files are
short errors naming them.

Each test starts from a copy of one finished 4-step tiny run (real files, real runs of
`mmgin.cli.run`): a few seconds each.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import pytest
import torch

from mmgin import io
from mmgin.model.loading import NetworkFileError
from mmgin.programs.synthesize_ema import SynthesizeEMA
from mmgin.train import checkpoint as ckpt
from mmgin.train import ema as ema_lib
from mmgin.train.optim import WarmupStepSchedule

from .harness import STEPS, TRAIN_FILES, differences, run_in_process, run_outputs, train_params

FIRST = 4  # iterations of the finished run every test starts from


@pytest.fixture(scope="module")
def finished(example_workspace, tmp_path_factory) -> Path:
    """A finished 4-step run: checkpoints 3 and 4, EMA snapshots at 2 and 4, ema_final.pth."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run_in_process(TRAIN_FILES, train_params(example_workspace, out, **{"Train.num_iterations": FIRST}))
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run, in the same place relative to the test (its config names it)."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def files_of(out: Path) -> dict[str, bytes]:
    """Every file under a run's folder but TensorBoard's and the config records, by path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and "tensorboard" not in p.parts and p.suffix != ".gin"}


def changed_since(before: dict[str, bytes], out: Path) -> list[str]:
    after = files_of(out)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def messages(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------- item 1
def test_unusable_checkpoints_are_set_aside_and_the_newest_usable_one_is_kept(
        example_workspace, uninterrupted, run, tally, caplog):
    """Newer than the good checkpoint 4: a truncated copy (5), a text file (7) and a checkpoint
    of another network variant (8). The run resumes from 4, sets the three aside (bytes intact,
    each named in the log with its reason) and ends as a run never disturbed; retention then
    keeps the newest two usable checkpoints."""
    reference, _ = uninterrupted
    good = ckpt.checkpoint_path(run, FIRST)
    bad = {5: good.read_bytes()[: good.stat().st_size // 2], 7: b"not a checkpoint\n"}
    variant = io.load_torch(good)
    name = next(k for k, v in variant["network"].items() if v.dim() == 2)
    variant["network"][name] = torch.zeros(3, 5)
    io.save_torch(variant, ckpt.checkpoint_path(run, 8))
    bad[8] = ckpt.checkpoint_path(run, 8).read_bytes()
    for iteration in (5, 7):
        ckpt.checkpoint_path(run, iteration).write_bytes(bad[iteration])

    with caplog.at_level(logging.WARNING):
        run_in_process(TRAIN_FILES, train_params(example_workspace, run))
    aside = run / ckpt.CHECKPOINT_DIR / ckpt.UNUSABLE_DIR
    kept = {int(p.name[5:14]): p.read_bytes() for p in aside.iterdir()}
    lost = differences(reference, run_outputs(run)) + [str(k) for k in bad if kept.get(k) != bad[k]]
    tally.add("training: unreadable and other-variant checkpoints newer than the good one", not lost, len(lost),
              "truncated copy, text file, another variant's checkpoint")
    assert not lost, lost
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["ckpt_000000006.pth", "ckpt_000000005.pth"]
    log = messages(caplog)
    variant_reason = ("the weights do not fit this network (keys of another shape, given vs this "
                      f"network's: 1 ({name} (3, 5)")
    for iteration, why in ((5, "unreadable"), (7, "unreadable"), (8, variant_reason)):
        assert f"skipped checkpoint {ckpt.checkpoint_path(run, iteration)}, {why}" in log, log


def test_a_run_over_checkpoints_it_cannot_use_stops_and_changes_nothing(example_workspace, run, tally):
    """Every checkpoint unreadable, or all of another configuration (a new seed): the run stops
    before any step with the files and reasons and how to start over, and changes no file (it
    used to start from scratch, delete each new checkpoint after writing it and replace
    ema_final.pth). Without checkpoints, a finished run's ema_final.pth is never replaced."""
    changed = []
    before = files_of(run)
    with pytest.raises(ckpt.CheckpointError, match=r"ckpt_000000004.pth: Train.seed is 14159265 in the "
                       r"checkpoint, 7 in this run(.|\n)*set OUTPUT_DIR to a new folder"):
        run_in_process(TRAIN_FILES, train_params(example_workspace, run, **{"Train.seed": 7}))
    changed += changed_since(before, run)
    for path in ckpt.list_checkpoints(run):
        path.write_bytes(path.read_bytes()[:1000])
    before = files_of(run)
    with pytest.raises(ckpt.CheckpointError, match=r"can continue this run \(nothing was changed\):\n"
                       r"  ckpt_000000004.pth: unreadable .*\n  ckpt_000000003.pth: unreadable"):
        run_in_process(TRAIN_FILES, train_params(example_workspace, run))
    changed += changed_since(before, run)
    shutil.rmtree(run / ckpt.CHECKPOINT_DIR)  # the test's own files: no checkpoint left at all
    before = files_of(run)
    with pytest.raises(ckpt.CheckpointError, match="ema_final.pth is the result of a finished run"):
        run_in_process(TRAIN_FILES, train_params(example_workspace, run))
    changed += changed_since(before, run)
    tally.add("training: every checkpoint unusable (unreadable, another seed), or none beside ema_final.pth",
              not changed, len(changed), "before any step")
    assert not changed, changed


# ------------------------------------------------------------------------------- item 6
def test_a_run_started_over_in_the_same_folder_never_mixes_ema_snapshots(example_workspace, run, tally, caplog):
    """What a run killed before its first checkpoint leaves (EMA snapshots only), then a new run
    in that folder: the old snapshots move to ema_ckpts/other_runs/<run>/ (where they still
    synthesize), the new run's ema_final.pth comes from its own; a folder mixing both is refused."""
    snapshots = run / "ema_ckpts"
    old_run = {p.name: p.read_bytes() for p in snapshots.glob("*.pt")}
    old_id = io.load_torch(snapshots / "0.4.pt")["_extra_state"]["run_id"]
    shutil.rmtree(run / ckpt.CHECKPOINT_DIR)
    (run / "ema_final.pth").unlink()
    with caplog.at_level(logging.WARNING):
        run_in_process(TRAIN_FILES, train_params(example_workspace, run, **{"Train.num_iterations": 2,
                                                                            "Train.seed": 3}))
    aside = snapshots / ema_lib.OTHER_RUNS_DIR / old_id
    kept = {p.name: p.read_bytes() for p in aside.glob("*.pt")}
    new = ema_lib.find_snapshots(snapshots)
    assert sorted(s.path.name for s in new) == ["0.2.pt", "1.2.pt"] and {s.run_id for s in new} != {old_id}
    expected = ema_lib.synthesize(new, 0.05)
    final = io.load_torch(run / "ema_final.pth")
    mixed = [k for k in expected if not torch.equal(final[k], expected[k])]
    lost = sorted(set(old_run) ^ set(kept)) + [k for k in kept if kept[k] != old_run.get(k)] + mixed
    tally.add("EMA: a run started over in a folder holding another run's snapshots", not lost, len(lost),
              "killed before its first checkpoint")
    assert not lost, lost
    assert f"belongs to run {old_id}, not to this run: moved to {aside}" in messages(caplog)
    SynthesizeEMA(output_dir=run / "old", snapshot_dir=aside, sigma_rel=0.08).run()  # still synthesizes

    shutil.copy(aside / "0.4.pt", snapshots / "0.4.pt")
    with pytest.raises(ema_lib.SnapshotError, match="are of several runs") as refused:
        SynthesizeEMA(output_dir=run / "mixed", snapshot_dir=snapshots, sigma_rel=0.08).run()
    assert f"run {old_id}: 1 snapshots, steps 4-4" in str(refused.value)
    assert f"run {new[0].run_id}: 2 snapshots, steps 2-2" in str(refused.value)


# ------------------------------------------------------------------------------- item 7
def test_settings_a_checkpoint_holds_apply_on_resume(example_workspace, run, caplog):
    """A new learning rate, eps and warm-up apply from the resumed iteration and the checkpoint
    records them; a re-run naming an older CheckpointConfig.resume_from does not rewind the run; an unused
    CheckpointConfig.weights is logged."""
    changed = {"adamw.learning_rate": 5e-5, "adamw.eps": 1e-7, "WarmupStepSchedule.warmup_steps": 10}
    with caplog.at_level(logging.INFO):
        run_in_process(TRAIN_FILES, train_params(example_workspace, run, **changed))
    group = io.load_torch(ckpt.checkpoint_path(run, STEPS))["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == 5e-5 and group["eps"] == 1e-7
    assert group["lr"] == 5e-5 * WarmupStepSchedule(warmup_steps=10)(STEPS)
    log = messages(caplog)
    assert "adamw.learning_rate = 5e-05 from iteration 4 on (the checkpoint's: 0.0001)" in log, log
    assert "adamw.eps = 1e-07 from iteration 4 on (the checkpoint's: 1e-08)" in log, log
    assert f"learning rate {5e-5 * 5 / 11:.6g} at iteration 4 by this run's schedule" in log, log

    older, newest = ckpt.checkpoint_path(run, STEPS - 1), ckpt.checkpoint_path(run, STEPS)
    inode = newest.stat().st_ino
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_in_process(TRAIN_FILES, train_params(example_workspace, run, **changed, **{"CheckpointConfig.resume_from": str(older)}))
        run_in_process(TRAIN_FILES, train_params(example_workspace, run, **changed, **{"CheckpointConfig.weights": str(older)}))
    log = messages(caplog)
    assert (f"CheckpointConfig.resume_from={older} (iteration {STEPS - 1}) is not used, the run in {run} "
            "is at or past it") in log, log
    assert f"CheckpointConfig.weights={older} is not used: the run continues from its checkpoint" in log, log
    assert newest.stat().st_ino == inode, "the re-run rewound the run and wrote its last checkpoint again"


# ------------------------------------------------------------------------------ item 12
def test_bad_files_are_short_errors_naming_them(example_workspace, run, tmp_path, tally):
    """A truncated EMA snapshot (SynthesizeEMA names it; a re-run of the finished run sets it
    aside and still writes ema_final.pth), CheckpointConfig.weights of another variant (one short line, not
    torch's 100+), and CheckpointConfig.weights that is no weights file (never torch's advice to load
    unsafely)."""
    snapshot = run / "ema_ckpts" / "1.4.pt"
    truncated = snapshot.read_bytes()[:2000]
    snapshot.write_bytes(truncated)
    (run / "ema_final.pth").unlink()  # the test's own file: the re-run must write it again
    with pytest.raises(ema_lib.SnapshotError, match=rf"EMA snapshot {snapshot} is unreadable .*move it out"):
        SynthesizeEMA(output_dir=tmp_path / "synth", snapshot_dir=run / "ema_ckpts").run()
    run_in_process(TRAIN_FILES, train_params(example_workspace, run, **{"Train.num_iterations": FIRST}))
    assert (run / "ema_final.pth").is_file()
    assert (run / "ema_ckpts" / ema_lib.UNUSABLE_DIR / "1.4.pt").read_bytes() == truncated

    weights = io.load_torch(run / "ema_final.pth")
    name = next(k for k, v in weights.items() if v.dim() == 2)
    weights[name] = torch.zeros(3, 5)
    weights.pop(next(iter(weights)))
    variant, text, pickled = tmp_path / "variant.pth", tmp_path / "notes.pth", tmp_path / "object.pth"
    io.save_torch(weights, variant)
    text.write_text("these are not weights\n")
    torch.save(argparse.Namespace(weights=1), pickled)
    errors = []
    for path, expected in ((variant, "missing keys: 1"), (text, "unreadable"), (pickled, "unreadable")):
        with pytest.raises(NetworkFileError) as error:
            run_in_process(TRAIN_FILES, train_params(example_workspace, tmp_path / path.stem,
                                                     **{"CheckpointConfig.weights": str(path)}))
        errors.append(str(error.value))
        assert f"CheckpointConfig.weights={path}" in str(error.value) and expected in str(error.value), str(error.value)
    assert all("weights_only" not in e and len(e.splitlines()) == 1 and len(e) < 600 for e in errors), errors
    tally.add("a truncated EMA snapshot; CheckpointConfig.weights of another variant or not weights at all", True, 0,
              "short error naming the file")
