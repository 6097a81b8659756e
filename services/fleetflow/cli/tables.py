"""Plain-text tables for people (`--json` is for programs): a header row, then aligned columns."""

from collections.abc import Sequence
from datetime import UTC, datetime


def render(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns as wide as their widest cell, two spaces apart; the last column is not padded."""
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def utc(ms: int) -> str:
    """Epoch ms as RFC 3339 in UTC with milliseconds, the form --since and --until accept back."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def number(value: float) -> str:
    return f"{value:g}"
