"""Layer-finetuning budgets: how many of the last blocks a device can train (arXiv 2411.07826).

Pure arithmetic over a model's sizes (`../shared/notes/platform.md` section 2). A client
trains its last n blocks plus the task head; the rest of the model runs forward only, without
gradient tracking. For each n the plan counts, in ``dtype_bytes`` per element:

- **memory** = every weight (frozen and trainable)
  + per trainable weight one gradient and ``num_optimizer_states`` states (AdamW: 2)
  + the activations the n trained blocks keep for backward;
- **activations of one trained block** (elements, an estimate in the spirit of Korthikanti
  et al. 2022, "Reducing Activation Recomputation", with masks counted as full elements):
  ``b * s * (8 h + 2 f) + 2 * b * a * s^2`` -- per token the block's input, two norm
  inputs, Q, K, V, the attention output and the FFN input (8 h), the FFN's inner
  pre- and post-activation (2 f); per head and token pair the softmax output and its dropout
  mask (2 a s^2). The frozen prefix keeps nothing (no-grad), its transient one-block working
  set and the task head's activations (b x h) are left out;
- **FLOPs** per training sample = forward through every block and the head
  + backward through the n trained blocks and the head. A block's forward is
  ``2 s P_block + 4 s^2 h`` (2 FLOPs per weight per token, plus attention scores and mixing);
  its backward ``2 s P_block + 8 s^2 h`` for the input gradients plus ``2 s T_block`` for the
  weight gradients of its T_block trainable weights (full blocks: T = P, so 2x forward; the
  LoRA variant: T = its adapters). The head's forward is ``2 P_head`` (one pooled vector),
  its backward twice that. Per round: times the samples a client sees
  (``num_samples * num_epochs``);
- **upload** = the trained blocks' trainable weights and the task head's.

The largest n in [0, L] whose three figures fit the device class's budgets is its n; if even
n = 0 (head only) does not fit, ``BudgetError`` names the class and the budget that fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi.devices import DeviceClass


class BudgetError(ValueError):
    """A device class whose budgets cannot hold even the task head."""


@dataclass(frozen=True)
class ModelSizes:
    """What the budgets need to know about a model: block sizes (forward order) and dims."""

    block_params: tuple[int, ...]  # parameters of each transformer block, in forward order
    head_params: int  # the task head (always trained)
    other_params: int  # never trained: embeddings, final norms, pooler
    d_model: int  # h
    d_ff: int  # f
    num_heads: int  # a
    block_trainable: tuple[int, ...] | None = None  # trainable weights per block when trained; None: all of it

    @property
    def trainable_per_block(self) -> tuple[int, ...]:
        return self.block_params if self.block_trainable is None else self.block_trainable

    @property
    def num_blocks(self) -> int:
        return len(self.block_params)

    @property
    def total_params(self) -> int:
        return sum(self.block_params) + self.head_params + self.other_params


@dataclass(frozen=True)
class TrainingShape:
    batch_size: int  # b
    seq_len: int  # s (the padded length: the worst case)
    dtype_bytes: int = 4
    num_optimizer_states: int = 2  # AdamW: first and second moments


@dataclass(frozen=True)
class LayerPlan:
    """The costs of training the last ``num_blocks`` blocks plus the head."""

    num_blocks: int
    memory_bytes: float
    flops: float
    upload_bytes: float


def block_activation_elements(sizes: ModelSizes, shape: TrainingShape) -> int:
    """Elements one trained block keeps for backward: b s (8h + 2f) + 2 b a s^2."""
    b, s = shape.batch_size, shape.seq_len
    return b * s * (8 * sizes.d_model + 2 * sizes.d_ff) + 2 * b * sizes.num_heads * s * s


def block_forward_flops(sizes: ModelSizes, shape: TrainingShape) -> np.ndarray:
    """FLOPs of each block's forward for one sample: 2 s P_block + 4 s^2 h."""
    s = shape.seq_len
    return np.array([2 * s * p + 4 * s * s * sizes.d_model for p in sizes.block_params], dtype=np.float64)


def block_backward_flops(sizes: ModelSizes, shape: TrainingShape) -> np.ndarray:
    """FLOPs of each block's backward for one sample: 2 s P_block + 8 s^2 h + 2 s T_block."""
    s = shape.seq_len
    return np.array(
        [2 * s * p + 8 * s * s * sizes.d_model + 2 * s * t for p, t in zip(sizes.block_params, sizes.trainable_per_block)],
        dtype=np.float64,
    )


def plan(sizes: ModelSizes, shape: TrainingShape, num_blocks: int, samples_per_round: int) -> LayerPlan:
    """Memory, FLOPs per round and upload of training the last ``num_blocks`` blocks and the head."""
    if not 0 <= num_blocks <= sizes.num_blocks:
        raise ValueError(f"num_blocks must lie in [0, {sizes.num_blocks}], got {num_blocks}")
    first = sizes.num_blocks - num_blocks
    trainable = sum(sizes.trainable_per_block[first:]) + sizes.head_params
    elements = (
        sizes.total_params
        + trainable * (1 + shape.num_optimizer_states)
        + num_blocks * block_activation_elements(sizes, shape)
    )
    forward = block_forward_flops(sizes, shape)
    head_forward = 2.0 * sizes.head_params
    backward = block_backward_flops(sizes, shape)[first:].sum() + 2.0 * head_forward
    per_sample = forward.sum() + head_forward + backward
    return LayerPlan(
        num_blocks=num_blocks,
        memory_bytes=float(elements * shape.dtype_bytes),
        flops=float(per_sample * samples_per_round),
        upload_bytes=float(trainable * shape.dtype_bytes),
    )


def _over_budget(p: LayerPlan, device: DeviceClass) -> list[str]:
    checks = (
        ("memory_bytes", p.memory_bytes, device.memory_bytes),
        ("flops_per_round", p.flops, device.flops_per_round),
        ("upload_bytes_per_round", p.upload_bytes, device.upload_bytes_per_round),
    )
    return [f"{key} needs {need:.4g} > {budget:.4g}" for key, need, budget in checks if budget is not None and need > budget]


def trainable_blocks(sizes: ModelSizes, shape: TrainingShape, device: DeviceClass, samples_per_round: int) -> LayerPlan:
    """The plan with the largest number of last blocks that fits ``device``'s budgets.

    Every cost grows with the number of trained blocks, so the first n (from L down) that
    fits is the largest.
    """
    for n in range(sizes.num_blocks, -1, -1):
        p = plan(sizes, shape, n, samples_per_round)
        if not _over_budget(p, device):
            return p
    reasons = "; ".join(_over_budget(plan(sizes, shape, 0, samples_per_round), device))
    raise BudgetError(
        f"device class {device.name!r}: its budgets cannot train even the task head alone ({reasons})"
    )


def choose_backbone(
    candidates: dict[str, ModelSizes], shape: TrainingShape, devices: tuple[DeviceClass, ...], samples_per_round: int
) -> tuple[str, dict[str, float]]:
    """The candidate with the highest share-weighted mean n over the device classes (ties: first listed).

    A candidate that some class cannot run at all (``BudgetError``) scores -inf. Returns the
    choice and every candidate's mean n, to print.
    """
    means: dict[str, float] = {}
    for name, sizes in candidates.items():
        try:
            means[name] = sum(
                d.share * trainable_blocks(sizes, shape, d, samples_per_round).num_blocks for d in devices
            )
        except BudgetError:
            means[name] = float("-inf")
    best = max(means, key=lambda n: means[n])  # max keeps the first of equal values
    if means[best] == float("-inf"):
        raise BudgetError(f"no backbone candidate fits every device class: {sorted(candidates)}")
    return best, means
