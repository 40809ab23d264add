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



# --------------------------------------------------------------------------- where files are found
REPO = Path(__file__).resolve().parents[1]
REPO_EXT_WEIGHTS = REPO / "ext_weights"
ABSENT = "mmgin-test-never-present.pth"


@pytest.fixture()
def elsewhere(tmp_path, monkeypatch) -> Path:
    """A working directory outside the checkout, with no weights directory set."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    return cwd


def test_resolve_explicit_path_wins_then_weights_dir_setting(elsewhere, tmp_path, monkeypatch):
    configured = tmp_path / "configured"
    (configured / "bigvgan_v2_44khz_128band_512x").mkdir(parents=True)
    (configured / "v1-16.pth").write_bytes(b"vae")
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(configured))
    assert weights.weights_dir() == configured
    assert weights.resolve("v1-16.pth") == configured / "v1-16.pth"
    assert weights.resolve("vae_16k") == configured / "v1-16.pth"  # a registry name
    assert weights.resolve("bigvgan_v2_44khz_128band_512x") == configured / "bigvgan_v2_44khz_128band_512x"
    # A path that exists is used as given: relative to the working directory, or absolute.
    (elsewhere / "v1-16.pth").write_bytes(b"mine")
    assert weights.resolve("v1-16.pth") == Path("v1-16.pth")
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"x")
    assert weights.resolve(mine) == mine
    # A missing absolute path is an error; it is not looked up anywhere else.
    with pytest.raises(MissingWeightsError) as missing:
        weights.resolve(tmp_path / "nowhere" / "v1-16.pth")
    assert str(configured) not in str(missing.value)


def test_default_weights_dir_is_the_checkouts_ext_weights_from_any_directory(elsewhere):
    assert weights.weights_dir() == REPO_EXT_WEIGHTS
    with pytest.raises(MissingWeightsError) as missing:
        weights.resolve(ABSENT)
    text = str(missing.value)
    assert str(REPO_EXT_WEIGHTS / ABSENT) in text and str(elsewhere) in text
    assert "ext_weights" not in str(elsewhere)


def test_missing_file_error_names_places_tried_and_how_to_get_it(elsewhere, tmp_path, monkeypatch):
    configured = tmp_path / "configured"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(configured))
    with pytest.raises(MissingWeightsError) as missing:
        weights.resolve("v1-16.pth")
    text = str(missing.value)
    assert text.startswith("weight file 'v1-16.pth' not found")  # the launcher adds 'mmgin: '
    for needed in (str(elsewhere), str(configured / "v1-16.pth"), "$MMGIN_WEIGHTS_DIR",
                   "releases/download/v0.1/v1-16.pth", "69f56803f59a549a1a507c93859fd4d7",
                   f"python -m mmgin.weights download vae_16k --dir {configured}"):
        assert needed in text
    # An old-style 'ext_weights/...' name says which name the weights directory answers to.
    with pytest.raises(MissingWeightsError, match="Name it 'v1-16.pth'"):
        weights.resolve("ext_weights/v1-16.pth")


SHIPPED_WEIGHT_BINDINGS = {
    "gin/audio/16k.gin": ("AudioCodec.vae_checkpoint", "AudioCodec.vocoder_checkpoint"),
    "gin/audio/44k.gin": ("AudioCodec.vae_checkpoint", "AudioCodec.vocoder_checkpoint"),
    "gin/vision/full.gin": ("get_clip.checkpoint", "get_clip.empty_string_path", "get_synchformer.checkpoint"),
}


@pytest.mark.parametrize("fragment", sorted(SHIPPED_WEIGHT_BINDINGS))
def test_shipped_weight_bindings_resolve_in_the_checkouts_ext_weights(fragment, elsewhere):
    import gin

    import mmgin.audio  # noqa: F401  (registers AudioCodec)
    import mmgin.vision  # noqa: F401  (registers get_clip, get_synchformer)

    gin.parse_config_file(str(REPO / fragment))
    for binding in SHIPPED_WEIGHT_BINDINGS[fragment]:
        value = gin.query_parameter(binding)
        item = weights.lookup(value)
        assert item is not None and value == item.file, f"{binding} should name a registered file by its file"
        try:
            found = weights.resolve(value)
        except MissingWeightsError as missing:
            assert str(REPO_EXT_WEIGHTS / value) in str(missing), binding
            assert item.url in str(missing), binding
        else:
            assert found == REPO_EXT_WEIGHTS / value, binding


def _tiny_16k_codec_files(directory: Path) -> None:
    """v1-16.pth and best_netG.pt in the release layouts, with the tiny codec's shapes."""
    from mmgin.audio import get_vocoder
    from mmgin.audio.bigvgan import released_state_dict
    from mmgin.audio.vae import VAE, VAE_CONFIGS

    directory.mkdir(parents=True, exist_ok=True)
    torch.save(VAE(VAE_CONFIGS[("16k", "tiny")]).state_dict(), directory / "v1-16.pth")
    torch.save({"generator": released_state_dict(get_vocoder("16k", size="tiny"))}, directory / "best_netG.pt")


def test_shipped_config_finds_weights_from_another_working_directory(elsewhere, tmp_path, monkeypatch):
    from mmgin import cli

    # gin/audio/16k.gin's own bindings ('v1-16.pth', 'best_netG.pt') with the tiny codec's shapes.
    files = ["gin/extract_audio_16k.gin", "gin/vision/tiny.gin"]
    params = ["AudioCodec.size = 'tiny'"] + [
        f"{name} = '{tmp_path / name.lower()}'" for name in ("AUDIO_DIR", "CAPTIONS_TSV", "CLIPS_TSV", "OUTPUT_DIR")
    ]
    configured = tmp_path / "configured"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(configured))
    with pytest.raises(MissingWeightsError) as missing:
        cli.run(files, params, [str(cli.REPO_ROOT)], dry_run=True)
    assert str(configured / "v1-16.pth") in str(missing.value)

    _tiny_16k_codec_files(configured)
    assert cli.run(files, params, [str(cli.REPO_ROOT)], dry_run=True) == 0


def test_evaluate_weights_by_file_name_come_from_the_weights_dir(elsewhere, tmp_path, monkeypatch):
    from mmgin.model import read_network_weights

    configured = tmp_path / "configured"
    configured.mkdir()
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(configured))
    with pytest.raises(MissingWeightsError, match=r"Evaluate.weights=mmaudio_small_16k.pth does not exist") as missing:
        read_network_weights("mmaudio_small_16k.pth", "Evaluate.weights")
    assert "af93cde404179f58e3919ac085b8033b" in str(missing.value)
    torch.save({"latent_mean": torch.zeros(20)}, configured / "mmaudio_small_16k.pth")
    found = read_network_weights("mmaudio_small_16k.pth", "Evaluate.weights")
    assert found.iteration is None and torch.equal(found.state["latent_mean"], torch.zeros(20))
