"""Reading one split of an offline dataset folder: JSON Lines files or a ``datasets`` save_to_disk.

A cluster user's offline copy of a hub dataset comes in one of two shapes, and both are
read here into the same thing, a mapping from field name to its column of values:

- a folder of JSON Lines files, one per split: ``<split>.jsonl.gz``, ``<split>.jsonl`` or
  ``<split>.json`` (one object per line);
- a folder written by ``DatasetDict.save_to_disk`` (``dataset_dict.json`` plus one
  sub-folder per split), read with ``datasets.load_from_disk``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedmpi.data.records import column, read_jsonl

JSONL_SUFFIXES = (".jsonl.gz", ".jsonl", ".json")
DATASET_DICT_FILE = "dataset_dict.json"  # what DatasetDict.save_to_disk writes at the top


def split_names(directory: Path) -> list[str]:
    """The splits the folder holds, in name order."""
    if (directory / DATASET_DICT_FILE).is_file():
        return sorted(p.name for p in directory.iterdir() if p.is_dir())
    return sorted({p.name[: -len(s)] for p in directory.iterdir() for s in JSONL_SUFFIXES if p.name.endswith(s)})


def read_split(directory: Path, split: str, fields: tuple[str, ...]) -> dict[str, list[Any]]:
    """The columns ``fields`` of split ``split``; a missing split or field is an error naming it."""
    where = f"{directory} (split {split!r})"
    if (directory / DATASET_DICT_FILE).is_file():
        # Imported here: datasets is slow to import and only save_to_disk folders need it.
        import datasets

        if not (directory / split).is_dir():
            raise ValueError(f"{where}: no such split; the folder has {split_names(directory)}")
        table = datasets.load_from_disk(str(directory / split))
        missing = [f for f in fields if f not in table.column_names]
        if missing:
            raise ValueError(f"{where}: no field {missing[0]!r} (fields: {sorted(table.column_names)})")
        return {f: list(table[f]) for f in fields}
    for suffix in JSONL_SUFFIXES:
        file = directory / f"{split}{suffix}"
        if file.is_file():
            rows = read_jsonl(file)
            return {f: column(rows, f, str(file)) for f in fields}
    raise ValueError(
        f"{where}: no such split: expected {split}.jsonl.gz, {split}.jsonl or {split}.json, or a datasets "
        f"save_to_disk folder ({DATASET_DICT_FILE}); the folder has {split_names(directory) or 'neither'}"
    )


def first_fields(directory: Path, split: str, candidates: tuple[tuple[str, ...], ...]) -> dict[str, list[Any]]:
    """The columns of the first field tuple in ``candidates`` that the split has in full."""
    errors = []
    for fields in candidates:
        try:
            return read_split(directory, split, fields)
        except ValueError as e:
            if "no field" not in str(e):
                raise
            errors.append(str(e))
    tried = " or ".join(str(list(f)) for f in candidates)
    raise ValueError(f"{directory} (split {split!r}): expected the fields {tried}; {errors[-1]}")
