"""The HDF5 result file, written by rank 0 only and flushed after every round.

Layout and names come from ``fedmpi.results_schema`` (shared with ``fedmpi.analyze``).
A killed job leaves a readable file whose status stays "running"; a failed one is
marked "failed" with its message; a finished one gets "complete" and the final weights.
"""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fedmpi import results_schema as S


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    import fedmpi

    return {
        S.ATTR_FEDMPI_VERSION: fedmpi.__version__,
        S.ATTR_TORCH_VERSION: str(torch.__version__),  # a TorchVersion, which h5py cannot store
        S.ATTR_TRANSFORMERS_VERSION: transformers.__version__,
        S.ATTR_PEFT_VERSION: peft.__version__,
        S.ATTR_PYTHON_VERSION: platform.python_version(),
    }


def _column(group: h5py.Group, name: str, dtype: str, width: int | None = None) -> h5py.Dataset:
    shape, maxshape = ((0,), (None,)) if width is None else ((0, width), (None, width))
    chunks = (256,) if width is None else (64, width)
    return group.create_dataset(name, shape=shape, maxshape=maxshape, dtype=np.dtype(dtype), chunks=chunks)


def _append(group: h5py.Group, rows: dict[str, Any]) -> None:
    for name, values in rows.items():
        values = np.asarray(values)
        if values.ndim == 0 or (values.ndim == 1 and group[name].ndim == 2):
            values = values[None]
        ds = group[name]
        n = ds.shape[0]
        ds.resize(n + values.shape[0], axis=0)
        ds[n:] = values


class ResultWriter:
    def __init__(
        self,
        path: Path,
        *,
        run_name: str,
        config_yaml: str,
        num_ranks: int,
        task_kind: str,
        num_clients: int,
        head_modules: list[tuple[str, str, int]],
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.num_heads_total = sum(n for _, _, n in head_modules)
        self._file = h5py.File(path, "w")
        attrs = self._file.attrs
        attrs.update(_versions())
        attrs[S.ATTR_FORMAT_VERSION] = S.FORMAT_VERSION
        attrs[S.ATTR_RUN_NAME] = run_name
        attrs[S.ATTR_CONFIG_YAML] = config_yaml
        attrs[S.ATTR_NUM_RANKS] = num_ranks
        attrs[S.ATTR_STARTED_AT] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        attrs[S.ATTR_STATUS] = S.STATUS_RUNNING
        attrs[S.ATTR_TASK_KIND] = task_kind
        self.metric = S.METRIC_ACCURACY if task_kind == S.TASK_CLASSIFICATION else S.METRIC_ROUGE_L
        attrs[S.ATTR_METRIC] = self.metric
        attrs[S.ATTR_NUM_CLIENTS] = num_clients
        attrs[S.ATTR_NUM_HEADS_TOTAL] = self.num_heads_total
        rounds = self._file.create_group(S.GROUP_ROUNDS)
        for name, dtype in S.ROUND_COLUMNS.items():
            _column(rounds, name, dtype)
        clients = self._file.create_group(S.GROUP_CLIENTS)
        for name, dtype in S.CLIENT_COLUMNS.items():
            _column(clients, name, dtype)
        if self.num_heads_total:
            for name, dtype in S.CLIENT_HEAD_COLUMNS.items():
                _column(clients, name, dtype, width=self.num_heads_total)
            heads = self._file.create_group(S.GROUP_HEADS)
            names, kinds, counts = zip(*head_modules)
            heads.create_dataset("module_names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
            heads.create_dataset("module_kinds", data=np.array(kinds, dtype=object), dtype=h5py.string_dtype())
            heads.create_dataset("num_heads", data=np.array(counts, dtype=np.int32))
        self._file.flush()

    def append_clients(self, rows: dict[str, Any]) -> None:
        """Columns of several client-round rows (arrays of equal length)."""
        _append(self._file[S.GROUP_CLIENTS], rows)

    def append_round(self, row: dict[str, Any]) -> None:
        """One round's row; flushes, so the file is readable if the job dies next."""
        _append(self._file[S.GROUP_ROUNDS], row)
        self._file.flush()

    def finish(self, final_params: np.ndarray) -> None:
        self._file.create_dataset(S.FINAL_TRAINABLE, data=final_params.astype(np.float32))
        self._file.attrs[S.ATTR_STATUS] = S.STATUS_COMPLETE
        self.close()

    def fail(self, message: str) -> None:
        if self._file.id.valid:
            self._file.attrs[S.ATTR_STATUS] = S.STATUS_FAILED
            self._file.attrs["error"] = message
            self.close()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.flush()
            self._file.close()
