"""Registry of the external weight files: where each lives, where it comes from, how to check it.

Nothing here downloads on its own. Every loader finds its file with ``resolve`` (``load`` calls
it), the one rule for where weights are: a path that exists (absolute, or relative to the working
directory) is used as given; any other relative name is looked up in the weights directory,
``$MMGIN_WEIGHTS_DIR`` when set, else the checkout's ``ext_weights/`` (beside the mmgin package,
whatever the working directory). Configs name files by their name there (``'v1-16.pth'``). A
missing file is an error naming where it looked, the file's URL and md5 and the command that
fetches it:

    python -m mmgin.weights list
    python -m mmgin.weights download [NAMES...] [--dir DIR] [--url-base URL]
    python -m mmgin.weights verify [NAMES...]

Downloads go to ``<file>.part`` (resumed with an HTTP Range request after an interruption) and
are renamed into place only after the md5 (or, where no md5 is published, the size) matches.
The directory defaults to the weights directory above; the URL base can be
replaced (``--url-base`` or ``$MMGIN_WEIGHTS_URL_BASE``: files are then fetched from
``<base>/<file>``), for mirrors and for tests.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tqdm import tqdm

from mmgin import io

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "MMGIN_WEIGHTS_DIR"
URL_BASE_ENV = "MMGIN_WEIGHTS_URL_BASE"
DEFAULT_DIR = "ext_weights"
REPO_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / DEFAULT_DIR  # the checkout's, not ./ext_weights

_MMAUDIO_HF = "https://huggingface.co/hkchengrex/MMAudio/resolve/main/weights"
_MMAUDIO_RELEASE = "https://github.com/hkchengrex/MMAudio/releases/download/v0.1"
_BIGVGAN_V2_HF = "https://huggingface.co/nvidia/bigvgan_v2_44khz_128band_512x/resolve/main"
_DFN5B_HF = "https://huggingface.co/apple/DFN5B-CLIP-ViT-H-14-384/resolve/main"
BIGVGAN_V2_44K_DIR = "bigvgan_v2_44khz_128band_512x"


@dataclass(frozen=True)
class WeightFile:
    """One external file. ``md5``/``size`` are None where the publisher gives none."""

    name: str
    file: str  # path relative to the weights directory
    url: str
    md5: str | None
    size: int | None
    description: str

    def check_description(self) -> str:
        if self.md5:
            return f"md5 {self.md5}"
        if self.size:
            return f"no published md5; checked by size ({self.size:,} bytes)"
        return "no published md5 or size; not verifiable"


REGISTRY: tuple[WeightFile, ...] = (
    WeightFile("mmaudio_small_16k", "mmaudio_small_16k.pth", f"{_MMAUDIO_HF}/mmaudio_small_16k.pth",
               "af93cde404179f58e3919ac085b8033b", 629_395_261, "MMAudio small 16 kHz network"),
    WeightFile("mmaudio_small_44k", "mmaudio_small_44k.pth", f"{_MMAUDIO_HF}/mmaudio_small_44k.pth",
               "babd74c884783d13701ea2820a5f5b6d", None, "MMAudio small 44.1 kHz network"),
    WeightFile("mmaudio_medium_44k", "mmaudio_medium_44k.pth", f"{_MMAUDIO_HF}/mmaudio_medium_44k.pth",
               "5a56b6665e45a1e65ada534defa903d0", 2_487_535_109, "MMAudio medium 44.1 kHz network"),
    WeightFile("mmaudio_large_44k", "mmaudio_large_44k.pth", f"{_MMAUDIO_HF}/mmaudio_large_44k.pth",
               "fed96c325a6785b85ce75ae1aafd2673", 4_120_388_840, "MMAudio large 44.1 kHz network"),
    WeightFile("mmaudio_large_44k_v2", "mmaudio_large_44k_v2.pth", f"{_MMAUDIO_HF}/mmaudio_large_44k_v2.pth",
               "01ad4464f049b2d7efdaa4c1a59b8dfe", 4_122_474_715, "MMAudio large 44.1 kHz v2 network"),
    WeightFile("vae_16k", "v1-16.pth", f"{_MMAUDIO_RELEASE}/v1-16.pth",
               "69f56803f59a549a1a507c93859fd4d7", 686_652_758, "mel VAE, 16 kHz (latent 20)"),
    WeightFile("vae_44k", "v1-44.pth", f"{_MMAUDIO_RELEASE}/v1-44.pth",
               "fab020275fa44c6589820ce025191600", 1_221_942_998, "mel VAE, 44.1 kHz (latent 40)"),
    WeightFile("bigvgan_16k", "best_netG.pt", f"{_MMAUDIO_RELEASE}/best_netG.pt",
               "eeaf372a38a9c31c362120aba2dde292", 449_217_313, "BigVGAN vocoder, 16 kHz"),
    WeightFile("bigvgan_v2_44k", f"{BIGVGAN_V2_44K_DIR}/bigvgan_generator.pt",
               f"{_BIGVGAN_V2_HF}/bigvgan_generator.pt", None, 489_041_291,
               "BigVGAN-v2 vocoder, 44.1 kHz 128 bands 512x (generator)"),
    WeightFile("bigvgan_v2_44k_config", f"{BIGVGAN_V2_44K_DIR}/config.json", f"{_BIGVGAN_V2_HF}/config.json",
               None, None, "BigVGAN-v2 44.1 kHz config.json (optional: the config is built in)"),
    WeightFile("synchformer", "synchformer_state_dict.pth", f"{_MMAUDIO_RELEASE}/synchformer_state_dict.pth",
               "5b2f5594b0730f70e41e549b7c94390c", 950_058_171, "Synchformer (visual branch used)"),
    WeightFile("empty_string", "empty_string.pth", f"{_MMAUDIO_RELEASE}/empty_string.pth",
               None, None, "CLIP text features of the empty caption"),
    WeightFile("clip_dfn5b", "open_clip_pytorch_model.bin", f"{_DFN5B_HF}/open_clip_pytorch_model.bin",
               None, 3_947_081_637, "DFN5B CLIP ViT-H/14-384 (open_clip)"),
)

_BY_NAME = {entry.name: entry for entry in REGISTRY}


class WeightsError(Exception):
    """A weight file is missing, corrupt, or failed verification."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """The weight file is not on disk."""


class CorruptWeightsError(WeightsError):
    """The file is on disk but cannot be read, or its checksum does not match."""


def weights_dir(root: str | os.PathLike | None = None) -> Path:
    """``root``, else $MMGIN_WEIGHTS_DIR, else the checkout's ext_weights/: the same folder from
    any working directory, so the downloader writes where the loaders look."""
    if root is not None:
        return Path(root)
    configured = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(configured).expanduser() if configured else REPO_WEIGHTS_DIR


def _describe_dir(root: str | os.PathLike | None) -> str:
    """Where the weights directory came from, for error messages."""
    if root is not None:
        return "the weights directory given"
    if os.environ.get(WEIGHTS_DIR_ENV):
        return f"the weights directory, from ${WEIGHTS_DIR_ENV}"
    return f"the weights directory: the checkout's {DEFAULT_DIR}/; set ${WEIGHTS_DIR_ENV} for another"


def lookup(name_or_file: str | os.PathLike) -> WeightFile | None:
    """The registry entry with this name, relative file path, or (unique) file name; else None."""
    key = str(name_or_file).replace(os.sep, "/")
    if key in _BY_NAME:
        return _BY_NAME[key]
    for item in REGISTRY:
        if key == item.file or key.endswith("/" + item.file):
            return item
    same_name = [item for item in REGISTRY if Path(item.file).name == Path(key).name]
    return same_name[0] if len(same_name) == 1 else None


def entry(name: str) -> WeightFile:
    """The registry entry called ``name``; unknown names list the known ones."""
    if name not in _BY_NAME:
        raise KeyError(f"unknown weight name {name!r}; known: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def how_to_get(item: WeightFile, root: str | os.PathLike | None = None) -> str:
    """The fix-it text: URL, checksum and the download command for one entry."""
    return (
        f"Get it with:  python -m mmgin.weights download {item.name} --dir {weights_dir(root)}\n"
        f"  (source: {item.url}; {item.check_description()})"
    )


def _candidates(path_or_name: str, root: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """Where ``resolve`` looks, in order, each with what it is (for the error message)."""
    if path_or_name in _BY_NAME:
        return [(weights_dir(root) / _BY_NAME[path_or_name].file, _describe_dir(root))]
    given = Path(path_or_name).expanduser()
    if given.is_absolute():
        return [(given, "the path given")]
    return [(given, f"relative to the working directory {Path.cwd()}"),
            (weights_dir(root) / given, _describe_dir(root))]


def _missing_hint(key: str, root: str | os.PathLike | None) -> str:
    """For a registered file: what it is, how to get it, and the name the weights directory knows."""
    item = lookup(key)
    if item is None:
        return ""
    given = Path(key)
    # An absolute path gets the command that puts the file there; any other name, the weights directory.
    at_given = given.is_absolute() and given.as_posix().endswith("/" + item.file)
    hint = f"\nIt is {item.name} ({item.description}). {how_to_get(item, _root_of(given, item) if at_given else root)}"
    if not given.is_absolute() and key not in (item.name, item.file):
        hint += f"\n  Name it {item.file!r} to find it in the weights directory from any working directory."
    return hint


def resolve(path_or_name: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """The weights file (or folder, e.g. the 44.1 kHz vocoder's) that ``path_or_name`` names, by
    the module's rule (a registry name, ``vae_16k``, is its file in the weights directory)."""
    key = os.fspath(path_or_name)
    tried = _candidates(key, root)
    for path, _ in tried:
        if path.exists():
            return path
    places = "\n".join(f"  {path}  ({what})" for path, what in tried)
    raise MissingWeightsError(f"weight file {key!r} not found; tried:\n{places}{_missing_hint(key, root)}")


def find(path_or_name: str | os.PathLike, root: str | os.PathLike | None = None) -> Path | None:
    """Like ``resolve`` but returns None when the file is absent."""
    try:
        return resolve(path_or_name, root)
    except MissingWeightsError:
        return None


def _root_of(path: Path, item: WeightFile) -> Path:
    """The weights directory that holds ``path`` as ``item.file``."""
    depth = len(Path(item.file).parts)
    return path.parents[depth - 1] if len(path.parts) > depth else Path(".")


def load(path_or_name: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load(weights_only=True) of the file ``resolve`` finds, with errors that say how to
    get a good copy."""
    path = resolve(path_or_name)
    item = lookup(path)
    hint = f"\n{how_to_get(item, _root_of(path, item))}" if item is not None else ""
    try:
        return io.load_torch(path, map_location=map_location)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on bad files
        raise CorruptWeightsError(
            f"Cannot read checkpoint {path} ({type(error).__name__}: {error}). The file is truncated, "
            f"corrupt or not a torch checkpoint; delete it and fetch it again.{hint}"
        ) from error


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def check_file(item: WeightFile, path: Path) -> str | None:
    """None if ``path`` passes the entry's check (md5, else size); otherwise what is wrong."""
    size = path.stat().st_size
    if item.size is not None and size != item.size:
        return f"size {size:,} bytes, expected {item.size:,}"
    if item.md5 is not None:
        actual = md5sum(path)
        if actual != item.md5:
            return f"md5 {actual}, expected {item.md5}"
    return None


class DownloadInterrupted(WeightsError):
    """The transfer stopped early; the partial file is kept for resuming."""


def _fetch_into(url: str, part: Path, timeout: float, progress: bool, label: str) -> None:
    """Appends the rest of ``url`` to ``part`` (Range request when part is non-empty)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "mmgin-weights"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            return  # the part already holds the whole file; verification decides
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        received = have
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=label, disable=not progress, leave=False,
        ) as bar:
            try:
                while block := response.read(1 << 20):
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as error:
                raise DownloadInterrupted(f"{label}: connection lost after {received:,} bytes ({error})") from error
            f.flush()
            os.fsync(f.fileno())
        if total is not None and received < total:
            raise DownloadInterrupted(f"{label}: connection closed after {received:,} of {total:,} bytes")


def download(name: str | WeightFile, root: str | os.PathLike | None = None, *, url_base: str | None = None,
             retries: int = 3, timeout: float = 60.0, progress: bool = True) -> Path:
    """Downloads one file (a registry name or entry), resuming a previous ``.part``, verifies it,
    and renames it into place.

    A file already present that passes its check is left alone. A checksum mismatch deletes the
    partial file and raises, so nothing that looks complete is left behind.
    """
    item = name if isinstance(name, WeightFile) else entry(name)
    target = weights_dir(root) / item.file
    if target.is_file():
        problem = check_file(item, target)
        if problem is None:
            log.info("%s: already present and verified (%s)", item.name, target)
            return target
        log.warning("%s: existing %s is bad (%s); downloading it again", item.name, target, problem)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    base = url_base if url_base is not None else os.environ.get(URL_BASE_ENV)
    url = f"{base.rstrip('/')}/{item.file}" if base else item.url
    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, timeout, progress, item.name)
            break
        except (DownloadInterrupted, urllib.error.URLError, http.client.HTTPException, OSError) as error:
            if isinstance(error, urllib.error.HTTPError) and error.code < 500:
                raise WeightsError(f"{item.name}: {url} answered HTTP {error.code} {error.reason}") from error
            if attempt == retries:
                raise DownloadInterrupted(
                    f"{item.name}: download from {url} failed ({error}). The partial file {part} is kept; "
                    f"run the same command again to resume."
                ) from error
            log.warning("%s: %s; retrying (%d/%d)", item.name, error, attempt + 1, retries)
            time.sleep(min(0.5 * 2.0**attempt, 10.0))
    problem = check_file(item, part)
    if problem is not None:
        part.unlink()
        raise CorruptWeightsError(
            f"{item.name}: downloaded file from {url} failed verification ({problem}); deleted {part}. "
            f"Run the command again; if it keeps failing the source file changed."
        )
    os.replace(part, target)
    return target


def verify(names: Iterable[str] | None = None, root: str | os.PathLike | None = None) -> dict[str, str]:
    """Status per entry: 'ok', 'present (unverifiable)', 'missing', or 'BAD: <what is wrong>'."""
    return {item.name: _status(item, weights_dir(root) / item.file)
            for item in ((entry(n) for n in names) if names else REGISTRY)}


def _status(item: WeightFile, path: Path) -> str:
    if not path.is_file():
        return "missing"
    problem = check_file(item, path)
    if problem is not None:
        return f"BAD: {problem}"
    return "ok" if (item.md5 or item.size) else "present (unverifiable)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmgin.weights", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", default=None,
        help=f"weights directory (default ${WEIGHTS_DIR_ENV}, else the checkout's {DEFAULT_DIR}/: {REPO_WEIGHTS_DIR})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", parents=[common], help="list the registered files and whether they are present")
    fetch = commands.add_parser("download", parents=[common], help="download files (all when no NAMES are given)")
    fetch.add_argument("names", nargs="*")
    fetch.add_argument("--url-base", default=None, help=f"fetch <URL_BASE>/<file> instead (or ${URL_BASE_ENV})")
    fetch.add_argument("--retries", type=int, default=3)
    check = commands.add_parser("verify", parents=[common], help="check present files against md5/size")
    check.add_argument("names", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = weights_dir(args.dir)

    if args.command == "list":
        for item in REGISTRY:
            present = "present" if (root / item.file).is_file() else "missing"
            size = f"{item.size:,} B" if item.size else "size unknown"
            print(f"{item.name:24s} {present:8s} {root / item.file}\n{'':24s} {item.description}; {size}; "
                  f"{item.check_description()}\n{'':24s} {item.url}")
        return 0
    if args.command == "download":
        for name in args.names or [item.name for item in REGISTRY]:
            try:
                path = download(name, root, url_base=args.url_base, retries=args.retries)
            except (WeightsError, KeyError) as error:
                print(f"error: {error}", file=sys.stderr)
                return 1
            print(f"{name}: {path}")
        return 0
    failed = False
    for name, state in verify(args.names or None, root).items():
        print(f"{name:24s} {state}")
        failed |= state.startswith("BAD") or (state == "missing" and bool(args.names))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
