"""The HDF5 result file, written by rank 0 only and flushed after every round.

Layout and names come from ``fedmpi.results_schema`` (shared with ``fedmpi.analyze``).
A killed job leaves a readable file whose status stays "running"; a failed one is
marked "failed" with its message; a finished one gets "complete" and the final weights.
After every round the server's state is checkpointed into the same file, so a killed or
preempted run can be resumed (``ResultWriter.resume``).
"""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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


@dataclass(frozen=True)
class ServerState:
    """What a resumed run needs: the server's state after ``round``."""

    round: int
    trainable: np.ndarray
    last_loss: np.ndarray
    times_seen: np.ndarray
    global_loss: float
    strategy: dict[str, np.ndarray] = field(default_factory=dict)  # the strategy's server state


# Sections that may differ between a run and its resumption (where it writes, how it runs, how long).
RESUMABLE_CHANGES = ("output", "runtime", "server.num_rounds")


def config_differences(old_yaml: str, new_yaml: str) -> list[str]:
    """Dotted keys whose values differ, ignoring RESUMABLE_CHANGES."""

    def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in tree.items():
            name = f"{prefix}{key}"
            out.update(flat(value, name + ".") if isinstance(value, dict) else {name: value})
        return out

    old, new = flat(yaml.safe_load(old_yaml)), flat(yaml.safe_load(new_yaml))
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)]


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
        group_families: list[tuple[str, str, int]],
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.num_groups = sum(n for _, _, n in group_families)
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
        attrs[S.ATTR_NUM_GROUPS_TOTAL] = self.num_groups
        rounds = self._file.create_group(S.GROUP_ROUNDS)
        for name, dtype in S.ROUND_COLUMNS.items():
            _column(rounds, name, dtype)
        clients = self._file.create_group(S.GROUP_CLIENTS)
        for name, dtype in {**S.CLIENT_COLUMNS, **S.CLIENT_DEVICE_COLUMNS}.items():
            _column(clients, name, dtype)
        if self.num_groups:
            for name, dtype in S.CLIENT_GROUP_COLUMNS.items():
                _column(clients, name, dtype, width=self.num_groups)
            groups = self._file.create_group(S.GROUP_GROUPS)
            names, kinds, counts = zip(*group_families)
            groups.create_dataset("family_names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
            groups.create_dataset("family_kinds", data=np.array(kinds, dtype=object), dtype=h5py.string_dtype())
            groups.create_dataset("num_groups", data=np.array(counts, dtype=np.int32))
        self._file.flush()

    @classmethod
    def resume(cls, path: Path, *, config_yaml: str, num_ranks: int) -> tuple[ResultWriter, ServerState]:
        """Reopen a run's file at its checkpoint: rows past it are dropped, a complete run is extended.

        The config must match the run's, except for RESUMABLE_CHANGES.
        """
        writer = cls.__new__(cls)
        writer.path = path
        writer._file = f = h5py.File(path, "r+")
        try:
            changed = config_differences(f.attrs[S.ATTR_CONFIG_YAML], config_yaml)
            if changed:
                raise ValueError(f"output.resume: the config differs from the run being resumed in {', '.join(changed)}")
            ckpt = f[S.GROUP_CHECKPOINT]
            state = ServerState(
                round=int(ckpt.attrs[S.ATTR_CHECKPOINT_ROUND]),
                trainable=ckpt["trainable"][:],
                last_loss=ckpt["last_loss"][:],
                times_seen=ckpt["times_seen"][:],
                global_loss=float(ckpt.attrs[S.ATTR_CHECKPOINT_GLOBAL_LOSS]),
                strategy={k: v[()] for k, v in ckpt.get(S.CHECKPOINT_STRATEGY, {}).items()},
            )
            for group in (S.GROUP_ROUNDS, S.GROUP_CLIENTS):  # rows written after the checkpoint
                keep = int((f[group]["round"][:] <= state.round).sum())
                for ds in f[group].values():
                    ds.resize(keep, axis=0)
            for name, dtype in S.CLIENT_DEVICE_COLUMNS.items():  # a file written before these existed
                if name not in f[S.GROUP_CLIENTS]:
                    _column(f[S.GROUP_CLIENTS], name, dtype).resize(keep, axis=0)
                    f[S.GROUP_CLIENTS][name][:] = np.nan
            if S.GROUP_FINAL in f:  # a complete run being extended by more rounds
                del f[S.GROUP_FINAL]
            f.attrs.pop(S.ATTR_ERROR, None)
        except BaseException:
            f.close()
            raise
        f.attrs[S.ATTR_CONFIG_YAML] = config_yaml
        f.attrs[S.ATTR_NUM_RANKS] = num_ranks
        f.attrs[S.ATTR_STATUS] = S.STATUS_RUNNING
        writer.metric = f.attrs[S.ATTR_METRIC]
        writer.num_groups = int(f.attrs[S.ATTR_NUM_GROUPS_TOTAL])
        return writer, state

    @staticmethod
    def resumable(path: Path) -> bool:
        """Whether ``path`` holds a run with a checkpoint to continue from."""
        if not path.exists():
            return False
        with h5py.File(path, "r") as f:
            return S.GROUP_CHECKPOINT in f

    def checkpoint(self, state: ServerState) -> None:
        """Record the server's state after ``state.round`` (rewritten in place every round)."""
        group = self._file.require_group(S.GROUP_CHECKPOINT)
        for name, dtype in S.CHECKPOINT_ARRAYS.items():
            data = np.asarray(getattr(state, name), dtype=dtype)
            if name in group:
                group[name][...] = data
            else:
                group.create_dataset(name, data=data)
        if S.CHECKPOINT_STRATEGY in group:
            del group[S.CHECKPOINT_STRATEGY]
        strategy = group.create_group(S.CHECKPOINT_STRATEGY)
        for name, value in state.strategy.items():
            strategy.create_dataset(name, data=value)
        group.attrs[S.ATTR_CHECKPOINT_ROUND] = state.round
        group.attrs[S.ATTR_CHECKPOINT_GLOBAL_LOSS] = state.global_loss
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
            self._file.attrs[S.ATTR_ERROR] = message
            self.close()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.flush()
            self._file.close()
