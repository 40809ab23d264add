"""The record of what the launcher parsed, so programs can save it beside their outputs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import gin

from mmgin import dist, io

OPERATIVE_CONFIG = "operative_config.gin"


@dataclass
class ParsedConfig:
    """Gin files (resolved paths, in parse order) and bindings, as given on the command line."""

    files: list[Path] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    search_path: list[Path] = field(default_factory=list)

    def text(self) -> str:
        """Every file with its includes expanded in place, then the params: one readable record."""
        parts = ["# config.gin: every file and --gin_param of this run, in the order parsed.\n"]
        parts += [self._expanded(path, set()) for path in self.files]
        if self.params:
            parts.append("\n# ---- --gin_param\n" + "\n".join(self.params) + "\n")
        return "".join(parts)

    def where_set(self, name: str) -> list[str]:
        """Where `name = ...` is written ('file:line', includes followed, or the --gin_param).

        Gin keeps no source location for a binding; this finds it for error messages.
        """
        assignment = re.compile(rf"^\s*{re.escape(name)}\s*=")
        places = [f"{path}:{number}" for top in self.files for path, number, line in self._lines(top, set())
                  if assignment.match(line)]
        return places + [f"--gin_param={p!r}" for p in self.params if assignment.match(p)]

    def include_loop(self) -> list[Path] | None:
        """A chain of includes that comes back to where it started (a.gin -> b.gin -> a.gin), if
        the files or params have one: gin would follow it until Python's recursion limit."""
        finished: set[Path] = set()

        def walk(path: Path, chain: list[Path]) -> list[Path] | None:
            if path in chain:
                return chain[chain.index(path):] + [path]
            if path in finished:
                return None
            for included in self._includes(path.read_text(), path.parent):
                loop = walk(included, chain + [path])
                if loop:
                    return loop
            finished.add(path)
            return None

        for top in self.files + [p for param in self.params for p in self._includes(param, Path.cwd())]:
            loop = walk(top, [])
            if loop:
                return loop
        return None

    def _includes(self, text: str, here: Path) -> Iterator[Path]:
        for line in text.splitlines():
            included = self._included(line, here)
            if included is not None:
                yield included

    def _lines(self, path: Path, seen: set[Path]) -> Iterator[tuple[Path, int, str]]:
        """Every line gin parses from `path`, each include's lines where it is included."""
        if path in seen:
            return
        seen.add(path)
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            yield path, number, line
            included = self._included(line, path.parent)
            if included is not None:
                yield from self._lines(included, seen)

    def _expanded(self, path: Path, seen: set[Path]) -> str:
        if path in seen:
            return f"\n# ---- (already included above: {path})\n"
        seen.add(path)
        lines = [f"\n# ---- file: {path}\n"]
        for line in path.read_text().splitlines(keepends=True):
            included = self._included(line, path.parent)
            if included is None:
                lines.append(line)
            else:
                lines.append(f"# {line.rstrip()}  (expanded below)")
                lines.append(self._expanded(included, seen))
                lines.append(f"\n# ---- back in: {path}\n")
        return "".join(lines)

    def _included(self, line: str, here: Path) -> Path | None:
        """The file an `include` line names, found as gin finds it; None for any other line."""
        match = _INCLUDE.match(line)
        if match is None:
            return None
        for root in [Path.cwd(), *self.search_path, here]:
            candidate = (root / match.group(1)).resolve()
            if candidate.is_file():
                return candidate
        return None


_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""")

_current = ParsedConfig()


def set_current(record: ParsedConfig) -> None:
    global _current
    _current = record


def current() -> ParsedConfig:
    return _current


def write_parsed(path: Path) -> None:
    io.write_text(path, _current.text())


def write_operative(output_dir: str | Path) -> None:
    """Saves every binding used so far as `<output_dir>/operative_config.gin` (rank 0).

    Gin lists a configurable only once it has been called, so this runs after the program is
    built and again after each step that calls more (an optimizer, a codec, a pipeline stage).
    A program that moved its output directory away (an extraction renames its `.partial` work
    directory to the store) took its record along: no empty directory is made again for it.
    """
    if not dist.is_main() or not Path(output_dir).is_dir():
        return
    io.write_text(Path(output_dir) / OPERATIVE_CONFIG, gin.operative_config_str())
