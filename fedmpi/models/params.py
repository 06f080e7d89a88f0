"""The flat trainable vector: the one get/set pair that moves adapter weights.

Only trainable state crosses the wire (style.md habit 6). ``TrainableLayout`` fixes the
order once, from the model: every parameter with ``requires_grad`` in
``model.named_parameters()`` order, each flattened row-major and concatenated. A LoRA B
of shape (d_out, r) therefore lies row after row, so the rows a head owns are one
contiguous run of the vector (see ``heads.py``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

_LORA_MARKERS = ("lora_A", "lora_B", "lora_E")  # lora_E: AdaLoRA's singular values
_TASK_HEAD_MARKER = ".modules_to_save."


def is_lora_param(name: str) -> bool:
    """True for a LoRA A or B weight (or bias), or an AdaLoRA E, under peft's naming."""
    return any(f".{marker}." in name for marker in _LORA_MARKERS)


def is_task_head_param(name: str, task_head: Sequence[str] = ()) -> bool:
    """True for a parameter of the task head: peft's trained copy, or under a ``task_head`` module."""
    return _TASK_HEAD_MARKER in name or any(f".{module}." in f".{name}" for module in task_head)


@dataclass(frozen=True, eq=False)
class TrainableLayout:
    """Names, shapes and offsets of the trainable parameters inside the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: np.ndarray  # int64, len(names) + 1; parameter i is flat[offsets[i]:offsets[i+1]]
    # Not counted as uploaded adapter in the paper's accounting: the classification head.
    is_task_head: np.ndarray
    # model -> its parameter objects in layout order, so get/set never search named_parameters.
    _cache: weakref.WeakKeyDictionary = field(
        default_factory=weakref.WeakKeyDictionary, repr=False, compare=False
    )

    @classmethod
    def from_model(cls, model: torch.nn.Module, task_head: Sequence[str] = ()) -> TrainableLayout:
        """The layout of ``model``'s trainable parameters.

        The task head is what peft trains in full (its ``.modules_to_save.`` copies) and,
        for a model peft did not wrap (full fine-tuning), the parameters under a module
        named in ``task_head``.
        """
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters; wrap it with a PEFT method first")
        names = tuple(n for n, _ in named)
        shapes = tuple(tuple(p.shape) for _, p in named)
        sizes = np.array([p.numel() for _, p in named], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        is_task_head = np.array([is_task_head_param(n, task_head) for n in names], dtype=bool)
        layout = cls(names=names, shapes=shapes, offsets=offsets, is_task_head=is_task_head)
        layout._cache[model] = [p for _, p in named]
        return layout

    @property
    def numel(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_params(self) -> int:
        return len(self.names)

    def slice_of(self, name: str) -> slice:
        """The flat range of parameter ``name``."""
        i = self.names.index(name)
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def _params(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        params = self._cache.get(model)
        if params is None:
            # A structurally identical model (e.g. the server's copy): resolve once, then cache.
            lookup = dict(model.named_parameters())
            missing = [n for n in self.names if n not in lookup]
            if missing:
                raise ValueError(f"model does not match the layout: no parameter {missing[0]!r}")
            params = [lookup[n] for n in self.names]
            for name, shape, p in zip(self.names, self.shapes, params):
                if tuple(p.shape) != shape:
                    raise ValueError(
                        f"model does not match the layout: {name} has shape {tuple(p.shape)}, not {shape}"
                    )
            self._cache[model] = params
        return params

    def _sizes(self) -> list[int]:
        return np.diff(self.offsets).tolist()

    def get_flat(self, model: torch.nn.Module, out: torch.Tensor | None = None) -> torch.Tensor:
        """A detached float32 copy of the trainable parameters, concatenated, on the model's
        device (one ``cat``); into ``out`` if given (one copy, to any device)."""
        params = self._params(model)
        if out is not None and (out.shape != (self.numel,) or out.dtype != torch.float32):
            raise ValueError(f"out must be float32 of shape ({self.numel},), got {out.dtype} {tuple(out.shape)}")
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).float() for p in params])
            if out is None:
                return flat
            out.copy_(flat)
        return out

    def set_flat(self, model: torch.nn.Module, flat: torch.Tensor | np.ndarray) -> None:
        """Copy ``flat`` into the model's trainable parameters in place (no autograd): one
        transfer to the parameters' device, then one split and a fused copy."""
        flat = torch.as_tensor(flat)
        if flat.shape != (self.numel,):
            raise ValueError(f"flat vector has shape {tuple(flat.shape)}, the layout needs ({self.numel},)")
        params = self._params(model)
        with torch.no_grad():
            flat = flat.to(device=params[0].device, dtype=params[0].dtype)
            pieces = [piece.view(p.shape) for piece, p in zip(flat.split(self._sizes()), params)]
            torch._foreach_copy_(params, pieces)

    def element_task_head_mask(self) -> np.ndarray:
        """Bool per flat element: True where the element belongs to the task head."""
        return np.repeat(self.is_task_head, np.diff(self.offsets))
