"""Atomic writes: complete file or nothing, ordinary permissions, weights-only loading."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from mmgin import io


def test_write_text_replaces_atomically_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    io.write_text(target, "one")
    io.write_text(target, "two")
    assert target.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "ckpt.pt"
    io.save_torch({"x": torch.ones(2)}, target)

    def explode(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        io.write_with(target, explode)
    assert io.load_torch(target)["x"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_load_torch_refuses_arbitrary_pickles(tmp_path):
    target = tmp_path / "evil.pt"
    torch.save({"obj": object()}, target)
    with pytest.raises(Exception, match="weights_only|Unsupported|global"):
        io.load_torch(target)
