"""No pickle execution from checkpoints: every torch.load in the project is weights-only."""

from __future__ import annotations

import ast
from pathlib import Path

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
