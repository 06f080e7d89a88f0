"""Where a run's files go, checked before anything slow starts, and the lock that keeps one job per file.

``check_result_path`` answers the output problems a user can make in one line: a folder that
is really a file, a result file that exists, a file another running job is writing. The
lock is an ``flock`` on ``<name>.h5.lock`` held by rank 0 until the run ends (``release``) or,
at the latest, until the process ends, so it disappears however that ends (kill -9 included).
"""

from __future__ import annotations

import atexit
import datetime as dt
import fcntl
import os
import secrets
from pathlib import Path

from fedmpi import results_schema as S
from fedmpi.config import Config

_held: dict[Path, int] = {}  # lock file -> open descriptor, for this process's lifetime


def unique_stamp() -> str:
    """A time stamp with a random suffix: two runs started in the same second get different names."""
    return f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def run_name(cfg: Config) -> str:
    """output.name, or one made of the strategy, the selection, the seed and a unique stamp."""
    if cfg.output.name:
        return cfg.output.name
    return f"{cfg.strategy.name}-{cfg.server.selection}-s{cfg.seed}-{unique_stamp()}"


def checkpoint_path(result_path: Path) -> Path:
    """The run's checkpoint: its own file beside the results, replaced atomically every round."""
    return result_path.with_name(result_path.stem + S.CHECKPOINT_SUFFIX)


def lock_path(result_path: Path) -> Path:
    return result_path.with_name(result_path.name + ".lock")


def check_result_path(folder: Path, name: str, *, replace: bool) -> Path:
    """``folder/name.h5``, claimed for this process; ValueError naming the problem otherwise.

    ``replace``: an existing file may be taken over (output.overwrite or output.resume).
    """
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"output.dir={folder}: {parent} is a file, not a folder")
    path = folder / f"{name}.h5"
    if path.exists() and not replace:
        raise ValueError(f"output: {path} already exists; set output.name=..., output.resume=true or output.overwrite=true")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"output.dir={folder}: cannot create it ({exc.strerror})") from None
    _lock(lock_path(path), path)
    return path


def _lock(lock: Path, path: Path) -> None:
    if lock in _held:
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ValueError(f"output.dir={lock.parent}: cannot write there ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ValueError(
            f"output: {path} is being written by a running job ({holder}); wait for it to end or choose another output.name"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
    _held[lock] = fd
    atexit.register(_release, lock)


def release(result_path: Path) -> None:
    """Give up this process's claim on ``result_path`` once its run has ended (a no-op if not held).

    The launcher's process ends with its run anyway; this matters when one process runs
    several simulations (a notebook, the tests' in-process runs).
    """
    _release(lock_path(result_path))


def _release(lock: Path) -> None:
    fd = _held.pop(lock, None)
    if fd is not None:
        lock.unlink(missing_ok=True)  # while still held, so no other job's lock is removed
        os.close(fd)
