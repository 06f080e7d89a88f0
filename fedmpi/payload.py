"""What a client uploads, and how a rank's uploads travel to the server as one flat buffer.

A ``ClientUpdate`` is the dense delta of the elements no group owns plus, for the groups
the client kept (heads, in the paper), their elements only; with the group mask and the
kept groups' scores. A rank packs all its clients' updates into one float32 buffer (values
and scores) and one small metadata record per client (ids, counts, a bit-packed group
mask, and what is recorded but not uploaded: costs, every group's measured score), so the
bytes that cross MPI shrink with sparsity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True)
class ClientUpdate:
    client: int
    rank: int
    num_samples: int
    train_loss: float
    seconds: float
    ops: float
    paper_bytes: int  # fp32 bytes of adapter parameters sent (the paper's Comm. column)
    values: np.ndarray  # float32: the delta at the elements selected by group_mask
    group_mask: np.ndarray | None  # bool (num_groups,), None: every element sent
    scores: np.ndarray | None  # float32 (num_groups,): importance, 0 for pruned groups
    # float32 (num_groups,): every group's score as the client measured it, pruned ones too (recorded for
    # Fig. 5; it travels with the metadata, not in the upload, which carries only the kept groups' scores)
    measured_scores: np.ndarray | None = None
    # Realised sparsity (Strategy.realised_sparsity), measured (fedmpi.measure) and planned (the
    # strategy's device budget) costs of the client-round.
    sparsity: float = 0.0
    peak_memory_bytes: float = math.nan
    device_seconds: float = math.nan  # CUDA-event seconds of the training (NaN on the CPU)
    saved_activation_bytes: int = 0
    device_class: int = -1
    planned_memory_bytes: float = math.nan
    planned_flops: float = math.nan
    planned_upload_bytes: float = math.nan
    skipped_modules: int = -1  # adapter modules whose branch never ran (FedARA's rank-0 modules); -1: none switched off

    @property
    def wire_bytes(self) -> int:
        """Bytes this update occupies on the wire: values, scores and the packed mask."""
        size = self.values.nbytes
        if self.group_mask is not None:
            size += int(self.group_mask.sum()) * 4 + (self.group_mask.size + 7) // 8
        return size


_FIELDS = [f.name for f in fields(ClientUpdate)]
COST_FIELDS = tuple(_FIELDS[_FIELDS.index("measured_scores") + 1 :])  # the realised, measured and planned figures above


def realised_sparsity(group_mask: np.ndarray | None) -> float:
    """Share of the groups a client did not upload (0: it sent everything); ``Strategy.realised_sparsity``'s default."""
    return 0.0 if group_mask is None or group_mask.size == 0 else 1.0 - float(group_mask.mean())


def selected_elements(group_index: np.ndarray, group_mask: np.ndarray | None) -> np.ndarray:
    """Elements an update carries: every element no group owns, and the kept groups' ones."""
    if group_mask is None:
        return np.ones(group_index.shape[0], dtype=bool)
    # np.maximum keeps the index valid for group-less elements, which are True anyway.
    return (group_index < 0) | group_mask[np.maximum(group_index, 0)]


def make_update(
    delta: np.ndarray,
    group_index: np.ndarray,
    group_mask: np.ndarray | None,
    scores: np.ndarray | None,
    **record: float | int,
) -> ClientUpdate:
    values = np.ascontiguousarray(delta[selected_elements(group_index, group_mask)], dtype=np.float32)
    measured = None if scores is None else np.asarray(scores, dtype=np.float32)
    if scores is not None and group_mask is not None:
        scores = np.where(group_mask, scores, 0).astype(np.float32)  # Eq. 7: pruned groups score 0
    return ClientUpdate(  # type: ignore[arg-type]
        values=values, group_mask=group_mask, scores=scores, measured_scores=measured, **record
    )


def densify(update: ClientUpdate, group_index: np.ndarray) -> np.ndarray:
    """The update as a full-length delta, zeros where the client sent nothing."""
    dense = np.zeros(group_index.shape[0], dtype=np.float32)
    dense[selected_elements(group_index, update.group_mask)] = update.values
    return dense


def pack(updates: list[ClientUpdate]) -> tuple[np.ndarray, list[dict]]:
    """One rank's updates -> (float32 buffer, per-update metadata)."""
    chunks: list[np.ndarray] = []
    meta = []
    for u in updates:
        kept_scores = None if u.group_mask is None or u.scores is None else u.scores[u.group_mask]
        chunks.append(u.values)
        if kept_scores is not None:
            chunks.append(kept_scores)
        meta.append(
            {
                "client": u.client,
                "rank": u.rank,
                "num_samples": u.num_samples,
                "train_loss": u.train_loss,
                "seconds": u.seconds,
                "ops": u.ops,
                "paper_bytes": u.paper_bytes,
                "measured_scores": u.measured_scores,
                **{k: getattr(u, k) for k in COST_FIELDS},
                "num_values": u.values.size,
                "has_scores": kept_scores is not None,
                "num_groups": None if u.group_mask is None else u.group_mask.size,
                "mask_bits": None if u.group_mask is None else np.packbits(u.group_mask).tobytes(),
            }
        )
    buffer = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return buffer.astype(np.float32, copy=False), meta


def unpack(buffer: np.ndarray, meta: list[dict]) -> list[ClientUpdate]:
    """Inverse of ``pack``."""
    updates = []
    pos = 0
    for m in meta:
        values = buffer[pos : pos + m["num_values"]]
        pos += m["num_values"]
        mask = scores = None
        if m["mask_bits"] is not None:
            bits = np.frombuffer(m["mask_bits"], dtype=np.uint8)
            mask = np.unpackbits(bits, count=m["num_groups"]).astype(bool)
            if m["has_scores"]:
                kept = int(mask.sum())
                scores = np.zeros(m["num_groups"], dtype=np.float32)
                scores[mask] = buffer[pos : pos + kept]
                pos += kept
        updates.append(
            ClientUpdate(
                client=m["client"],
                rank=m["rank"],
                num_samples=m["num_samples"],
                train_loss=m["train_loss"],
                seconds=m["seconds"],
                ops=m["ops"],
                paper_bytes=m["paper_bytes"],
                measured_scores=m["measured_scores"],
                **{k: m[k] for k in COST_FIELDS},
                values=values,
                group_mask=mask,
                scores=scores,
            )
        )
    if pos != buffer.size:
        raise ValueError(f"payload buffer has {buffer.size} values, metadata describes {pos}")
    return updates
