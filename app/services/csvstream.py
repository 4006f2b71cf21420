"""CSV produced row by row for streamed downloads, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """Neutralize spreadsheet formula injection: text starting with = + - @ gets a leading quote.
    Numbers stay numbers (a negative amount is not a formula)."""
    if value is None:
        return ""
    if isinstance(value, (int, float, Decimal)):
        return value
    text = str(value)
    return "'" + text if text[:1] in FORMULA_STARTS else text


def stream_rows(header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    """The header, then each row, each yielded as soon as it is written; every cell through `safe_cell`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        value = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return value

    writer.writerow(header)
    yield flush()
    for row in rows:
        writer.writerow([safe_cell(cell) for cell in row])
        yield flush()
