"""Tab-separated tables in the dialect pandas writes (`to_csv(sep='\\t', index=False)`).

The reference writes and reads its tables with pandas; this module produces byte-identical
files with the standard library (header row, minimal quoting with '"', '\\n' line ends), so
tables travel both ways without pandas being installed.
"""

from __future__ import annotations

import csv
import io as _io
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from mmgin import io


class TableError(ValueError):
    """A table that cannot be used (missing file, missing column); the message names the file."""


def read_table(path: str | Path, required: Sequence[str] = ()) -> list[dict[str, str]]:
    """Rows of a tsv as dicts of strings; every column in ``required`` must be present.

    A leading UTF-8 byte order mark (spreadsheets save one) is skipped, as pandas does.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"table {path} does not exist; check the path")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t")
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise TableError(
                f"table {path} lacks column(s) {', '.join(missing)} (has: {', '.join(columns) or 'none'}); "
                "the first line must be a tab-separated header"
            )
        return [{k: ("" if v is None else v) for k, v in row.items() if k is not None} for row in reader]


def format_table(columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
    buffer = _io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns])
    return buffer.getvalue()


def write_table(path: str | Path, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
    """Writes a tsv atomically (a crash leaves the old table or the new one)."""
    io.write_text(path, format_table(columns, rows))
