"""Reading JSON Lines files and turning rows (dicts) into text columns and label ids.

Shared by every source that reads local files (``jsonl``, ``20newsgroups``, ``e2e_nlg``, ...)
and by the Hugging Face sources once their rows are in hand; no source-specific logic.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a JSON Lines file, gzip-compressed or plain (told apart by content)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file not found: {path}")
    with open(path, "rb") as f:
        compressed = f.read(2) == _GZIP_MAGIC
    opener = gzip.open if compressed else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object per line")
            rows.append(row)
    if not rows:
        raise ValueError(f"data file is empty: {path}")
    return rows


def column(rows: Sequence[dict[str, Any]], field: str, where: str) -> list[Any]:
    """The values of ``field`` in every row; a missing field is an error naming ``where``."""
    for i, row in enumerate(rows):
        if field not in row:
            raise ValueError(
                f"{where}: row {i} has no field {field!r} (fields: {sorted(row)}); "
                "set the field name option (input_field / label_field / target_field)"
            )
    return [row[field] for row in rows]


def text_column(rows: Sequence[dict[str, Any]], field: str, where: str) -> list[str]:
    """Like ``column`` but every value must be a string (None counts as empty text)."""
    return as_texts(column(rows, field, where), field, where)


def as_texts(values: Sequence[Any], field: str, where: str) -> list[str]:
    """``values`` of ``field`` as strings (None counts as empty text); anything else is an error."""
    for i, v in enumerate(values):
        if v is not None and not isinstance(v, str):
            raise ValueError(f"{where}: field {field!r} of row {i} is {type(v).__name__}, expected text")
    return ["" if v is None else v for v in values]


def encode_labels(
    train_raw: Sequence[Any], eval_raw: Sequence[Any], where: str
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Class ids for both splits and the class names.

    Integer labels are ids already (names are then "0".."K-1"); string labels are mapped
    to the positions of their sorted names. Both splits share one mapping, so a class
    that only appears in eval still gets an id.
    """
    values = list(train_raw) + list(eval_raw)
    # bool is an int subclass, but True/False labels are almost surely a wrong field.
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        ids = np.asarray(values, dtype=np.int64)
        if ids.min() < 0:
            raise ValueError(f"{where}: negative label id {int(ids.min())}")
        names = tuple(str(i) for i in range(int(ids.max()) + 1))
    elif all(isinstance(v, str) for v in values):
        names = tuple(sorted(set(values)))
        lookup = {name: i for i, name in enumerate(names)}
        ids = np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))
    else:
        kinds = sorted({type(v).__name__ for v in values})
        raise ValueError(f"{where}: labels must be all integers or all strings, found {kinds}")
    n_train = len(train_raw)
    return ids[:n_train], ids[n_train:], names


def strip_newsgroup_header(text: str) -> str:
    """Drop a Usenet post's header block: everything up to the first blank line.

    Same rule as scikit-learn's ``fetch_20newsgroups(remove=("headers",))``, including
    its edge case: a post with no blank line is all header and becomes empty.
    """
    _header, _blank, body = text.partition("\n\n")
    return body
