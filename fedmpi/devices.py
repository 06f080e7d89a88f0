"""Device profiles: the federation's device classes, their budgets, and which class each client is.

A device class has a peak-memory, a FLOPs-per-round and an upload-per-round budget (None =
unlimited), an optional relative speed and the share of clients that own such a device
(`../shared/notes/platform.md` section 2). A homogeneous federation is one class with share
1. Which class a client gets is a pure function of (seed, number of clients, shares): one
seeded permutation of the clients, cut in proportion to the shares by largest remainder, so
the split is exact, every rank computes the same table, and the number of ranks plays no part.
"""

from __future__ import annotations

from pydantic import Field, model_validator

import numpy as np

from fedmpi import seeding
from fedmpi.config_section import Section

SHARE_TOLERANCE = 1e-6


class DeviceClass(Section):
    """One kind of device and its per-round budgets."""

    name: str = Field(min_length=1)
    memory_bytes: float | None = Field(None, gt=0)  # peak training memory; None = unlimited
    flops_per_round: float | None = Field(None, gt=0)  # local training FLOPs per round; None = unlimited
    upload_bytes_per_round: float | None = Field(None, gt=0)  # None = unlimited
    speed: float = Field(1.0, gt=0)  # relative compute speed (1 = reference); recorded, not simulated
    share: float = Field(1.0, gt=0, le=1)  # share of the clients owning this class


class DevicesConfig(Section):
    """The ``devices:`` section: no classes means unconstrained devices."""

    classes: tuple[DeviceClass, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> DevicesConfig:
        names = [c.name for c in self.classes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"devices.classes: class names must be unique; repeated: {duplicates}")
        if self.classes:
            total = sum(c.share for c in self.classes)
            if abs(total - 1.0) > SHARE_TOLERANCE:
                shares = ", ".join(f"{c.name}={c.share}" for c in self.classes)
                raise ValueError(f"devices.classes: shares must sum to 1, got {total:g} ({shares})")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)


def class_counts(shares: np.ndarray, num_clients: int) -> np.ndarray:
    """Clients per class: floor(share * N), the remainder to the largest fractions (ties: lower class id)."""
    shares = np.asarray(shares, dtype=np.float64)
    exact = shares * num_clients
    counts = np.floor(exact).astype(np.int64)
    left = num_clients - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:left]] += 1
    return counts


def assign_classes(seed: int, num_clients: int, shares: np.ndarray) -> np.ndarray:
    """int64 per client: the index of its device class (a seeded permutation cut by ``class_counts``)."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    counts = class_counts(shares, num_clients)
    order = seeding.rng(seed, seeding.DEVICES).permutation(num_clients)
    classes = np.empty(num_clients, dtype=np.int64)
    classes[order] = np.repeat(np.arange(len(counts)), counts)
    return classes


def client_classes(cfg: DevicesConfig, seed: int, num_clients: int) -> np.ndarray | None:
    """Each client's device-class index, or None when the section declares no classes."""
    if not cfg.classes:
        return None
    return assign_classes(seed, num_clients, np.array([c.share for c in cfg.classes]))


def profile_table(cfg: DevicesConfig, num_clients: int) -> dict[str, np.ndarray]:
    """The device classes as the result file's /devices columns (NaN = unlimited); no rows without classes."""

    def column(values: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    shares = np.array([c.share for c in cfg.classes], dtype=np.float64)
    counts = class_counts(shares, num_clients) if cfg.classes else np.zeros(0, np.int64)
    return {
        "name": np.array(cfg.names, dtype=object),
        "share": shares,
        "num_clients": counts.astype(np.int64),
        "memory_bytes": column([c.memory_bytes for c in cfg.classes]),
        "flops_per_round": column([c.flops_per_round for c in cfg.classes]),
        "upload_bytes_per_round": column([c.upload_bytes_per_round for c in cfg.classes]),
        "speed": column([c.speed for c in cfg.classes]),
    }
