"""pyproject.toml, the locks in requirements/ and this environment agree.

README's commands install from the locks; a lock that misses a package, pins one outside its
pyproject range, or holds one nothing needs any more fails here, with the command to run.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = {"main": REPO / "requirements" / "main.txt", "dev": REPO / "requirements" / "dev.txt"}
REGENERATE = "run `bash requirements/update.sh` and commit requirements/"
# Released in lock-step and matching the GPU machines: pinned exactly in pyproject.toml too.
TORCH_FAMILY = {"torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.0"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def direct_requirements(lock: str) -> list[Requirement]:
    project = _pyproject()
    names = project["dependencies"] + (project["optional-dependencies"]["dev"] if lock == "dev" else [])
    return [Requirement(line) for line in names]


def read_lock(path: Path) -> list[Requirement]:
    """The lock's entries: one `name==version ; marker` a line, comments and blanks aside."""
    entries = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(Requirement(line))
    return entries


def pins_here(entries: list[Requirement]) -> dict[str, str]:
    """name -> exact version of the entries that apply to this interpreter and platform."""
    pins = {}
    for entry in entries:
        if entry.marker is None or entry.marker.evaluate():
            (spec,) = entry.specifier
            pins[canonicalize_name(entry.name)] = spec.version
    return pins


def closure(roots: list[Requirement]) -> set[str]:
    """Every distribution that ``roots`` need here, walked through installed metadata."""
    needed: set[str] = set()
    expanded: set[tuple[str, str]] = set()
    pending = [root for root in roots if _applies(root, "")]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        needed.add(name)
        for extra in ["", *sorted(requirement.extras)]:
            if (name, extra) not in expanded:
                expanded.add((name, extra))
                children = [Requirement(line) for line in importlib.metadata.requires(name) or []]
                pending += [child for child in children if _applies(child, extra)]
    return needed


def _applies(requirement: Requirement, extra: str) -> bool:
    """Whether ``requirement`` holds here when its package is installed with ``extra``."""
    return requirement.marker is None or requirement.marker.evaluate(dict(default_environment(), extra=extra))


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_entry_is_an_exact_pin(lock):
    for entry in read_lock(LOCKS[lock]):
        specs = list(entry.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{LOCKS[lock]}: {entry} is not an exact pin"


def test_the_torch_family_is_pinned_exactly_in_pyproject_and_the_locks():
    declared = {canonicalize_name(r.name): str(r.specifier) for r in direct_requirements("dev")}
    for name, version in TORCH_FAMILY.items():
        assert declared.get(name) == f"=={version}", f"pyproject.toml must pin {name}=={version}"
    assert pins_here(read_lock(LOCKS["dev"])).items() >= TORCH_FAMILY.items()
    assert "torchaudio" not in pins_here(read_lock(LOCKS["main"])), "torchaudio is a dev dependency only"


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_each_direct_requirement_is_locked_within_its_range(lock):
    pins = pins_here(read_lock(LOCKS[lock]))
    for requirement in direct_requirements(lock):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in {LOCKS[lock].name}: {REGENERATE}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{LOCKS[lock].name} pins {name}=={pins[name]} outside pyproject's {requirement}: {REGENERATE}"
        )


def test_the_dev_lock_holds_the_main_lock_unchanged():
    main = {(canonicalize_name(e.name), str(e.specifier), str(e.marker)) for e in read_lock(LOCKS["main"])}
    dev = {(canonicalize_name(e.name), str(e.specifier), str(e.marker)) for e in read_lock(LOCKS["dev"])}
    assert main <= dev, f"dev.txt differs from main.txt on {sorted(main - dev)}: {REGENERATE}"


def test_this_environment_was_installed_from_the_dev_lock():
    """The closure checks below read installed metadata, which is the lock's only if this holds."""
    wrong = {}
    for name, version in pins_here(read_lock(LOCKS["dev"])).items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "(not installed)"
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, (
        f"installed versions differ from requirements/dev.txt (locked, installed): {wrong}; "
        "install with `.venv/bin/pip install -r requirements/dev.txt -e '.[dev]'`"
    )


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_each_lock_holds_exactly_what_its_requirements_need(lock):
    pins = pins_here(read_lock(LOCKS[lock]))
    needed = closure(direct_requirements(lock))
    assert not needed - pins.keys(), f"{LOCKS[lock].name} lacks {sorted(needed - pins.keys())}: {REGENERATE}"
    assert not pins.keys() - needed, f"{LOCKS[lock].name} holds unneeded {sorted(pins.keys() - needed)}: {REGENERATE}"
