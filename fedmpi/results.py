"""The HDF5 result file, written by rank 0 only, and the run's checkpoint beside it.

Layout and names come from ``fedmpi.results_schema`` (shared with ``fedmpi.analyze``).
The writer opens the result file only while it writes (a round's rows, a status) and
closes it again, so other processes can read a running job's file between rounds. A killed
job leaves a readable file whose status stays "running"; a failed or stopped one is marked
"failed" with its message; a finished one gets "complete" and the final weights. After every
round the server's state goes to its own checkpoint file (``<name>.ckpt.h5``), written under
a temporary name and renamed into place, so a kill at any moment leaves either the previous
checkpoint or the new one, never a broken one (``ResultWriter.resume``).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import h5py
import numpy as np

from fedmpi import results_schema as S
from fedmpi.output_files import checkpoint_path


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


def _write_devices(f: h5py.Group, devices: dict[str, Any] | None) -> None:
    """The /devices table (fixed size, written once); zero rows for None or a run without classes."""
    group = f.create_group(S.GROUP_DEVICES)
    devices = devices or {}
    for name, dtype in S.DEVICE_COLUMNS.items():
        if dtype == "str":
            values = np.array([str(v) for v in devices.get(name, [])], dtype=object)
            group.create_dataset(name, shape=values.shape, data=values if values.size else None, dtype=h5py.string_dtype())
        else:
            group.create_dataset(name, data=np.asarray(devices.get(name, []), dtype=np.dtype(dtype)))


def _append(group: h5py.Group, rows: dict[str, Any]) -> None:
    for name, values in rows.items():
        values = np.asarray(values)
        if values.ndim == 0 or (values.ndim == 1 and group[name].ndim == 2):
            values = values[None]
        ds = group[name]
        n = ds.shape[0]
        ds.resize(n + values.shape[0], axis=0)
        ds[n:] = values


# What a column added to an older file holds for its earlier rows: NaN (floats), -1 (ints: "none").
_MISSING = {"f": np.nan, "i": -1}


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
        devices: dict[str, Any] | None = None,
        evaluation: str = S.EVALUATION_GLOBAL,
    ) -> None:
        """``devices``: the /devices columns (``fedmpi.devices.profile_table``); None: no classes.
        ``evaluation``: how eval_metric is scored, one of ``EVALUATIONS`` (as resolved, not as configured)."""
        if evaluation not in S.EVALUATIONS:
            raise ValueError(f"evaluation must be one of {S.EVALUATIONS}, got {evaluation!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.checkpoint_path = checkpoint_path(path)
        self.checkpoint_path.unlink(missing_ok=True)  # an overwritten run's checkpoint is not this run's
        self.num_groups = sum(n for _, _, n in group_families)
        self.metric = S.METRIC_ACCURACY if task_kind == S.TASK_CLASSIFICATION else S.METRIC_ROUGE_L
        self._closed = False
        with h5py.File(path, "w") as f:
            attrs = f.attrs
            attrs.update(_versions())
            attrs[S.ATTR_FORMAT_VERSION] = S.FORMAT_VERSION
            attrs[S.ATTR_RUN_NAME] = run_name
            attrs[S.ATTR_CONFIG_YAML] = config_yaml
            attrs[S.ATTR_NUM_RANKS] = num_ranks
            attrs[S.ATTR_STARTED_AT] = _now()
            attrs[S.ATTR_STATUS] = S.STATUS_RUNNING
            attrs[S.ATTR_TASK_KIND] = task_kind
            attrs[S.ATTR_METRIC] = self.metric
            attrs[S.ATTR_EVALUATION] = evaluation
            attrs[S.ATTR_NUM_CLIENTS] = num_clients
            attrs[S.ATTR_NUM_GROUPS_TOTAL] = self.num_groups
            rounds = f.create_group(S.GROUP_ROUNDS)
            for name, dtype in S.ROUND_COLUMNS.items():
                _column(rounds, name, dtype)
            for name in S.ROUND_METRIC_COLUMNS:
                _column(rounds, name, "float64")
            _write_devices(f, devices)
            clients = f.create_group(S.GROUP_CLIENTS)
            for name, dtype in {**S.CLIENT_COLUMNS, **S.CLIENT_COST_COLUMNS}.items():
                _column(clients, name, dtype)
            if self.num_groups:
                for name, dtype in S.CLIENT_GROUP_COLUMNS.items():
                    _column(clients, name, dtype, width=self.num_groups)
                groups = f.create_group(S.GROUP_GROUPS)
                names, kinds, counts = zip(*group_families)
                groups.create_dataset("family_names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
                groups.create_dataset("family_kinds", data=np.array(kinds, dtype=object), dtype=h5py.string_dtype())
                groups.create_dataset("num_groups", data=np.array(counts, dtype=np.int32))

    @contextmanager
    def _open(self) -> Iterator[h5py.File]:
        with h5py.File(self.path, "r+") as f:
            yield f

    @classmethod
    def resume(
        cls, path: Path, *, config_yaml: str, num_ranks: int, devices: dict[str, Any] | None = None
    ) -> tuple[ResultWriter, ServerState]:
        """Reopen a run's file at its checkpoint: rows past it are dropped, a complete run is extended.

        The config must match the run's, except for RESUMABLE_CHANGES. ``num_ranks`` keeps the
        first run's value; each resumption is recorded in ``resumed_at`` / ``resumed_num_ranks``.
        A file from before a column or table existed gets it (NaN / -1 for the rows already there;
        ``devices`` for the /devices table, which the unchanged config determines).
        """
        writer = cls.__new__(cls)
        writer.path, writer.checkpoint_path, writer._closed = path, checkpoint_path(path), False
        state = read_checkpoint(writer.checkpoint_path)
        with h5py.File(path, "r+") as f:
            changed = config_differences(f.attrs[S.ATTR_CONFIG_YAML], config_yaml)
            if changed:
                raise ValueError(f"output.resume: the config differs from the run being resumed in {', '.join(changed)}")
            for group in (S.GROUP_ROUNDS, S.GROUP_CLIENTS):  # rows written after the checkpoint
                keep = int((f[group]["round"][:] <= state.round).sum())
                for ds in f[group].values():
                    ds.resize(keep, axis=0)
            num_groups = int(f.attrs[S.ATTR_NUM_GROUPS_TOTAL])
            added = {**S.CLIENT_COST_COLUMNS, **(S.CLIENT_GROUP_COLUMNS if num_groups else {})}
            for name, dtype in added.items():  # a file written before the column existed
                if name not in f[S.GROUP_CLIENTS]:
                    width = num_groups if name in S.CLIENT_GROUP_COLUMNS else None
                    _column(f[S.GROUP_CLIENTS], name, dtype, width).resize(keep, axis=0)
                    f[S.GROUP_CLIENTS][name][:] = _MISSING.get(np.dtype(dtype).kind, 0)
            if S.GROUP_DEVICES not in f:
                _write_devices(f, devices)
            f.attrs.setdefault(S.ATTR_EVALUATION, S.EVALUATION_GLOBAL)  # the only mode before the attribute
            if S.GROUP_FINAL in f:  # a complete run being extended by more rounds
                del f[S.GROUP_FINAL]
            f.attrs.pop(S.ATTR_ERROR, None)
            f.attrs[S.ATTR_CONFIG_YAML] = config_yaml
            f.attrs[S.ATTR_RESUMED_AT] = [*f.attrs.get(S.ATTR_RESUMED_AT, []), _now()]
            f.attrs[S.ATTR_RESUMED_NUM_RANKS] = np.array([*f.attrs.get(S.ATTR_RESUMED_NUM_RANKS, []), num_ranks], np.int32)
            f.attrs[S.ATTR_STATUS] = S.STATUS_RUNNING
            writer.metric = f.attrs[S.ATTR_METRIC]
            writer.num_groups = num_groups
        return writer, state

    @staticmethod
    def resumable(path: Path) -> bool:
        """Whether ``path`` holds a run with a checkpoint to continue from."""
        return path.exists() and checkpoint_path(path).exists()

    def checkpoint(self, state: ServerState) -> None:
        """Record the server's state after ``state.round``: a new file, renamed over the previous one."""
        partial = self.checkpoint_path.with_name(self.checkpoint_path.name + ".partial")
        write_checkpoint(partial, state)
        os.replace(partial, self.checkpoint_path)  # atomic: readers see the old file or the new one

    def append_clients(self, rows: dict[str, Any]) -> None:
        """Columns of several client-round rows (arrays of equal length)."""
        with self._open() as f:
            _append(f[S.GROUP_CLIENTS], rows)

    def append_round(self, row: dict[str, Any]) -> None:
        """One round's row; the file is closed afterwards, so it is readable if the job dies next."""
        with self._open() as f:
            _append(f[S.GROUP_ROUNDS], row)

    def finish(self, final_params: np.ndarray) -> None:
        with self._open() as f:
            f.create_dataset(S.FINAL_TRAINABLE, data=final_params.astype(np.float32))
            f.attrs[S.ATTR_STATUS] = S.STATUS_COMPLETE
        self._closed = True

    def fail(self, message: str) -> None:
        if not self._closed:
            with self._open() as f:
                f.attrs[S.ATTR_STATUS] = S.STATUS_FAILED
                f.attrs[S.ATTR_ERROR] = message
            self._closed = True

    def close(self) -> None:
        """Nothing stays open between writes; kept so callers can end a writer explicitly."""
        self._closed = True


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_checkpoint(path: Path, state: ServerState) -> None:
    """``state`` as a small HDF5 file at ``path``, on disk (fsync) before this returns."""
    with h5py.File(path, "w") as f:
        for name, dtype in S.CHECKPOINT_ARRAYS.items():
            f.create_dataset(name, data=np.asarray(getattr(state, name), dtype=dtype))
        strategy = f.create_group(S.CHECKPOINT_STRATEGY)
        for name, value in state.strategy.items():
            strategy.create_dataset(name, data=value)
        f.attrs[S.ATTR_CHECKPOINT_ROUND] = state.round
        f.attrs[S.ATTR_CHECKPOINT_GLOBAL_LOSS] = state.global_loss
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(path: Path) -> ServerState:
    try:
        with h5py.File(path, "r") as f:
            return ServerState(
                round=int(f.attrs[S.ATTR_CHECKPOINT_ROUND]),
                trainable=f["trainable"][:],
                last_loss=f["last_loss"][:],
                times_seen=f["times_seen"][:],
                global_loss=float(f.attrs[S.ATTR_CHECKPOINT_GLOBAL_LOSS]),
                strategy={k: v[()] for k, v in f.get(S.CHECKPOINT_STRATEGY, {}).items()},
            )
    except (OSError, KeyError) as exc:
        raise ValueError(f"output.resume: cannot read the checkpoint {path} ({exc})") from None
