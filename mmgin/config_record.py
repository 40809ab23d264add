"""The record of what the launcher parsed, so programs can save it beside their outputs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import gin

from mmgin import io


@dataclass
class ParsedConfig:
    """Gin files (resolved paths, in parse order) and bindings, as given on the command line."""

    files: list[Path] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    search_path: list[Path] = field(default_factory=list)

    def text(self) -> str:
        """Every file with its includes expanded in place, then the params: one readable record."""
        parts = ["# config.gin: every file and --gin_param of this run, in the order parsed.\n"]
        for path in self.files:
            parts.append(self._expanded(path, set()))
        if self.params:
            parts.append("\n# ---- --gin_param\n" + "\n".join(self.params) + "\n")
        return "".join(parts)


    def _expanded(self, path: Path, seen: set[Path]) -> str:
        if path in seen:
            return f"\n# ---- (already included above: {path})\n"
        seen.add(path)
        lines = [f"\n# ---- file: {path}\n"]
        for line in path.read_text().splitlines(keepends=True):
            match = _INCLUDE.match(line)
            included = self._find(match.group(1), path.parent) if match else None
            if included is None:
                lines.append(line)
            else:
                lines.append(f"# {line.rstrip()}  (expanded below)")
                lines.append(self._expanded(included, seen))
                lines.append(f"\n# ---- back in: {path}\n")
        return "".join(lines)

    def _find(self, name: str, here: Path) -> Path | None:
        for root in [Path.cwd(), *self.search_path, here]:
            candidate = (root / name).resolve()
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


def write_operative(path: Path) -> None:
    io.write_text(path, gin.operative_config_str())
