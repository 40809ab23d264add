"""Weights registry: downloads over real HTTP on 127.0.0.1 (resume, md5 rejection), clear errors."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
from pathlib import Path

import pytest
import torch

from mmgin import weights
from mmgin.weights import CorruptWeightsError, DownloadInterrupted, MissingWeightsError, WeightFile


class _Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` (url path -> bytes) with Range support; can cut the next transfer short."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut_next_after: int | None = None  # bytes sent before dropping the connection
        self.honour_range = True
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        self.server.requests.append((self.path, range_header))
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and self.server.honour_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.cut_next_after
        if cut is not None:
            self.server.cut_next_after = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True  # drop mid-body: the client sees EOF before Content-Length
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


PAYLOAD = os.urandom(3 * (1 << 20) + 12345)  # several read blocks


def _entry(server: _Server, md5: str | None = None, size: int | None = None) -> WeightFile:
    server.files["/models/blob.bin"] = PAYLOAD
    return WeightFile(
        "test_blob", "models/blob.bin", f"{server.base}/models/blob.bin",
        hashlib.md5(PAYLOAD).hexdigest() if md5 is None else md5,
        len(PAYLOAD) if size is None else size,
        "test payload",
    )


def test_download_verifies_and_places_file(server, tmp_path):
    item = _entry(server)
    path = weights.download(item, tmp_path, retries=0, progress=False)
    assert path == tmp_path / "models" / "blob.bin"
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "models" / "blob.bin.part").exists()
    # Present and valid: no second transfer.
    weights.download(item, tmp_path, retries=0, progress=False)
    assert len(server.requests) == 1


def test_download_resumes_after_connection_drop(server, tmp_path):
    item = _entry(server)
    cut = len(PAYLOAD) * 2 // 5
    server.cut_next_after = cut
    with pytest.raises(DownloadInterrupted, match="run the same command again"):
        weights.download(item, tmp_path, retries=0, progress=False)
    part = tmp_path / "models" / "blob.bin.part"
    assert part.stat().st_size == cut
    assert not (tmp_path / "models" / "blob.bin").exists()

    path = weights.download(item, tmp_path, retries=0, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/models/blob.bin", f"bytes={cut}-")
    assert not part.exists()


def test_download_retries_resume_within_one_call(server, tmp_path):
    item = _entry(server)
    server.cut_next_after = 1000
    path = weights.download(item, tmp_path, retries=2, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=1000-"]


def test_download_restarts_when_server_ignores_range(server, tmp_path):
    item = _entry(server)
    server.cut_next_after = 5000
    with pytest.raises(DownloadInterrupted):
        weights.download(item, tmp_path, retries=0, progress=False)
    server.honour_range = False
    assert weights.download(item, tmp_path, retries=0, progress=False).read_bytes() == PAYLOAD


def test_md5_mismatch_leaves_nothing_that_looks_complete(server, tmp_path):
    item = _entry(server, md5="0" * 32)
    with pytest.raises(CorruptWeightsError, match="failed verification"):
        weights.download(item, tmp_path, retries=0, progress=False)
    assert list((tmp_path / "models").iterdir()) == []


def test_size_check_when_no_md5(server, tmp_path):
    item = WeightFile("t", "blob.bin", f"{server.base}/models/blob.bin", None, len(PAYLOAD) + 1, "wrong size")
    server.files["/models/blob.bin"] = PAYLOAD
    with pytest.raises(CorruptWeightsError, match="size"):
        weights.download(item, tmp_path, retries=0, progress=False)
    assert not (tmp_path / "blob.bin").exists()


def test_cli_download_with_url_base_then_load_and_verify(server, tmp_path, capsys):
    buffer = tmp_path / "src.pth"
    torch.save(torch.ones(1, 77, 8), buffer)
    server.files["/mirror/empty_string.pth"] = buffer.read_bytes()
    target = tmp_path / "weights"
    args = ["download", "empty_string", "--dir", str(target), "--url-base", f"{server.base}/mirror"]
    assert weights.main(args) == 0
    assert torch.equal(weights.load(weights.resolve("empty_string", target)), torch.ones(1, 77, 8))
    assert weights.main(["verify", "empty_string", "--dir", str(target)]) == 0
    assert "present (unverifiable)" in capsys.readouterr().out
    # A registered file with a published md5 that does not match is reported and fails verify.
    (target / "v1-16.pth").write_bytes(b"not the vae")
    assert weights.main(["verify", "vae_16k", "--dir", str(target)]) == 1
    assert "BAD" in capsys.readouterr().out


def test_missing_and_corrupt_files_say_how_to_fix(tmp_path):
    with pytest.raises(MissingWeightsError) as missing:
        weights.resolve("vae_44k", tmp_path)
    text = str(missing.value)
    for needed in ("v1-44.pth", "fab020275fa44c6589820ce025191600", "releases/download/v0.1/v1-44.pth",
                   "python -m mmgin.weights download vae_44k"):
        assert needed in text
    assert weights.find("best_netG.pt", tmp_path) is None

    corrupt = tmp_path / "best_netG.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CorruptWeightsError) as bad:
        weights.load(corrupt)
    assert "eeaf372a38a9c31c362120aba2dde292" in str(bad.value) and "download bigvgan_16k" in str(bad.value)


def test_registry_is_consistent():
    names = [item.name for item in weights.REGISTRY]
    assert len(names) == len(set(names))
    for item in weights.REGISTRY:
        assert item.url.startswith("https://") and item.url.endswith(Path(item.file).name)
        assert item.md5 is None or re.fullmatch(r"[0-9a-f]{32}", item.md5)
        assert weights.lookup(item.file) is item and weights.lookup(item.name) is item
