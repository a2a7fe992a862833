"""Short text and HTML summaries of models, traces and results (for `repr` and notebooks).

Arrays are shown as `f32[30, 1, 7, 576]` (dtype and shape), never their contents; small
scalars and strings are shown as values. `summary_repr` / `summary_html` turn any dataclass
into one line / one table, so a result class gets both with two one-line methods.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Iterable
from typing import Any

import numpy as np

_SHORT_DTYPES = {
    "float32": "f32",
    "float16": "f16",
    "bfloat16": "bf16",
    "float64": "f64",
    "int32": "i32",
    "int64": "i64",
    "bool": "bool",
    "uint8": "u8",
    "int8": "i8",
}


def array_summary(x: Any) -> str:
    """`f32[30, 1, 7, 576]` for an array, a short `repr` for anything else."""
    if hasattr(x, "shape") and hasattr(x, "dtype") and getattr(x, "ndim", 0) > 0:
        dtype = _SHORT_DTYPES.get(str(x.dtype), str(x.dtype))
        return f"{dtype}[{', '.join(map(str, x.shape))}]"
    if hasattr(x, "shape") and hasattr(x, "dtype"):  # 0-d array: its value
        return repr(np.asarray(x).item())
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)) and len(x) > 6:
        return f"{type(x).__name__} of {len(x)}: [{', '.join(array_summary(v) for v in x[:3])}, ...]"
    if isinstance(x, dict) and len(x) > 6:
        return f"dict of {len(x)} keys"
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def _fields(obj: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr]


def summary_repr(obj: Any, fields: Iterable[tuple[str, Any]] | None = None) -> str:
    """`Name(field=summary, ...)` for a dataclass (or the given `(name, value)` pairs)."""
    pairs = _fields(obj) if fields is None else fields
    return f"{type(obj).__name__}(" + ", ".join(f"{k}={array_summary(v)}" for k, v in pairs) + ")"


def html_table(title: str, rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column HTML table (name, summary) under a bold title."""
    body = "".join(
        f"<tr><td style='text-align:left'><code>{html.escape(str(k))}</code></td>"
        f"<td style='text-align:left'>{html.escape(array_summary(v))}</td></tr>"
        for k, v in rows
    )
    return f"<div><b>{html.escape(title)}</b><table>{body}</table></div>"


def summary_html(obj: Any, fields: Iterable[tuple[str, Any]] | None = None) -> str:
    """`html_table` of a dataclass's fields (or the given pairs)."""
    return html_table(type(obj).__name__, _fields(obj) if fields is None else fields)


def frame_html(
    values: np.ndarray, row_labels: Iterable[Any], col_labels: Iterable[Any], *, title: str = "", fmt: str = "{:.3g}"
) -> str:
    """A 2-D array as an HTML table with labelled rows and columns (cells formatted with `fmt`
    when numeric, escaped text otherwise)."""
    values = np.asarray(values)

    def cell(v):
        return fmt.format(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v)

    head = "<tr><th></th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in col_labels) + "</tr>"
    body = "".join(
        "<tr><th>" + html.escape(str(r)) + "</th>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>"
        for r, row in zip(row_labels, values, strict=True)
    )
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    return f"<table>{caption}{head}{body}</table>"


class ResultDisplay:
    """Mixin for result dataclasses (declare them with `@dataclasses.dataclass(repr=False)`): a
    one-line `repr` with arrays as shapes, and a notebook display with the fields and, when the
    class has one, its `table()` text or `html_table_body()` HTML."""

    def __repr__(self) -> str:
        return summary_repr(self)

    def _repr_html_(self) -> str:
        parts = [summary_html(self)]
        html_table_body, table = getattr(self, "html_table_body", None), getattr(self, "table", None)
        if html_table_body is not None:
            parts.append(html_table_body())
        elif table is not None:
            try:
                parts.append(f"<pre>{html.escape(table())}</pre>")
            except (ValueError, TypeError):  # a shape table() does not print
                pass
        return "".join(parts)


def config_html(config: Any, title: str | None = None) -> str:
    """A nested dataclass config as one HTML table of dotted keys and values."""
    rows: list[tuple[str, Any]] = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
            else:
                rows.append((prefix + f.name, v))

    walk(config, "")
    return html_table(title or type(config).__name__, rows)


__all__ = ["ResultDisplay", "config_html", "array_summary", "summary_repr", "summary_html", "html_table", "frame_html"]
