"""The record of what the launcher parsed, so programs can save it beside their outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gin

from mmgin import io


@dataclass
class ParsedConfig:
    """Gin files (resolved paths, in parse order) and bindings, as given on the command line."""

    files: list[Path] = field(default_factory=list)
    params: list[str] = field(default_factory=list)

    def text(self) -> str:
        parts = ["# config.gin: every file and --gin_param of this run, in the order parsed.\n"]
        for path in self.files:
            parts.append(f"\n# ---- file: {path}\n{path.read_text()}")
        if self.params:
            parts.append("\n# ---- --gin_param\n" + "\n".join(self.params) + "\n")
        return "".join(parts)


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
