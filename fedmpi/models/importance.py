"""Head confidence (paper Eq. 6), measured inside the attention of the training forward.

method-spec "Importance (Eq. 6)": a head's importance is its confidence (Voita et al.
2019), the largest post-softmax attention weight of each query token, with padding and EOS
key columns zeroed first (no renormalisation), averaged over the valid (non-padding,
non-EOS) query tokens of a sample, then over the client's samples. A head that parks its
attention on EOS is therefore not confident.

The measurement is an attention function registered with transformers'
``AttentionInterface`` under ``CONFIDENCE_ATTENTION``. It computes exactly the eager
attention of BERT/DistilBERT/RoBERTa/T5/BART/GPT-2 (T5's position bias included) and,
while a ``HeadConfidence`` is recording, reduces each (B, H, T, T) weight tensor to
(B, H) on the spot, so full maps are never kept. Attention modules are recognised by
identity (the ``module`` argument every model passes to its attention function).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from fedmpi.models.heads import HeadMap

CONFIDENCE_ATTENTION = "fedmpi_confidence"
LABEL_PAD = -100  # Hugging Face's ignore index in seq2seq labels


def confidence(weights: torch.Tensor, query_valid: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-head confidence (B, H) of post-softmax weights (B, H, Tq, Tk).

    For each valid query, the max over keys after zeroing invalid key columns (padding,
    EOS; no renormalisation), averaged over the valid queries (bool (B, Tq)); a sample with
    no valid query scores 0.
    """
    peak = (weights * key_valid[:, None, None, :].to(weights.dtype)).amax(dim=-1)  # (B, H, Tq)
    q = query_valid[:, None, :].to(weights.dtype)
    return (peak * q).sum(dim=-1) / q.sum(dim=-1).clamp_min(1.0)


@dataclass
class _Slot:
    """What one attention module needs while recording: where its heads go and what is valid."""

    name: str
    first_head: int
    num_heads: int
    query_valid: torch.Tensor  # bool (B, Tq)
    key_valid: torch.Tensor  # bool (B, Tk)
    sums: torch.Tensor  # the recorder's float64 accumulators (rows, heads), shared
    counts: torch.Tensor
    # (row, number of samples) per consecutive run of the batch; None: every sample to row 0.
    segments: list[tuple[int, int]] | None = None
    calls: int = 0

    def record(self, weights: torch.Tensor) -> None:
        b, h, tq, tk = weights.shape
        if (b, tq) != tuple(self.query_valid.shape) or tk != self.key_valid.shape[1] or h != self.num_heads:
            raise RuntimeError(
                f"attention in {self.name} saw weights of shape {tuple(weights.shape)}, but the batch given to "
                f"recording() implies (B, {self.num_heads}, {tuple(self.query_valid.shape)[1]}, "
                f"{self.key_valid.shape[1]}) with B={self.query_valid.shape[0]}: run the model once on exactly "
                "that batch, without a KV cache"
            )
        with torch.no_grad():
            per_sample = confidence(weights.detach(), self.query_valid, self.key_valid)
            has_query = self.query_valid.any(dim=1)
            heads = slice(self.first_head, self.first_head + self.num_heads)
            segments = self.segments or [(0, b)]
            start = 0
            for row, count in segments:
                part = slice(start, start + count)
                self.sums[row, heads] += per_sample[part].sum(dim=0).to(torch.float64)
                # Samples without any valid query measure nothing; Eq. 6 averages the others.
                self.counts[row, heads] += has_query[part].sum()
                start += count
        self.calls += 1


# id(attention module) -> its slot, only while some HeadConfidence is recording.
_ACTIVE: dict[int, _Slot] = {}


def confidence_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention (the same ops, in the same order) that also feeds the active recorder."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if key.shape[1] != query.shape[1]:  # grouped-query attention: share each key/value head
        repeats = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if position_bias is not None:  # T5's relative position bias
        attn_weights = attn_weights + position_bias
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
        else:
            attn_weights = attn_weights + attention_mask[:, :, :, : key.shape[-2]]
    attn_weights = nn.functional.softmax(attn_weights, dim=-1)
    slot = _ACTIVE.get(id(module))
    if slot is not None:
        slot.record(attn_weights)  # before dropout: the confidence of the head, not of a dropout draw
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


ALL_ATTENTION_FUNCTIONS.register(CONFIDENCE_ATTENTION, confidence_attention_forward)
# Masks are built per implementation name; ours consumes the same additive masks as eager.
ALL_MASK_ATTENTION_FUNCTIONS.register(CONFIDENCE_ATTENTION, eager_mask)


def use_confidence_attention(model: nn.Module) -> None:
    """Switch ``model``'s attention implementation to the recording one."""
    from fedmpi.models.build import set_attention  # build imports this module

    set_attention(model, CONFIDENCE_ATTENTION)


def _shift_right(ids: torch.Tensor, first: int) -> torch.Tensor:
    out = ids.new_empty(ids.shape)
    out[:, 1:] = ids[:, :-1]
    out[:, 0] = first
    return out


class HeadConfidence:
    """Accumulates Eq. 6 per global head (``HeadMap`` order) over the batches it records."""

    def __init__(self, model: nn.Module, head_map: HeadMap, *, eos_token_id: int | None, pad_token_id: int) -> None:
        named = dict(model.named_modules())
        missing = [m.name for m in head_map.modules if m.name not in named]
        if missing:
            raise ValueError(f"head map does not match the model: no module {missing[0]!r}")
        self._modules = [named[m.name] for m in head_map.modules]
        self._head_map = head_map
        self._eos = eos_token_id
        self._pad = pad_token_id
        config = model.config
        self._encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        start = getattr(config, "decoder_start_token_id", None)
        self._decoder_start = pad_token_id if start is None else int(start)
        self._sums = torch.zeros(1, head_map.num_heads_total, dtype=torch.float64)
        self._counts = torch.zeros(1, head_map.num_heads_total, dtype=torch.int64)
        self._num_samples = 0

    def reset(self, num_rows: int = 1) -> None:
        """Start afresh with ``num_rows`` separate accumulators (one per client trained together)."""
        if self._sums.shape[0] != num_rows:
            shape = (num_rows, self._head_map.num_heads_total)
            self._sums = torch.zeros(shape, dtype=torch.float64, device=self._sums.device)
            self._counts = torch.zeros(shape, dtype=torch.int64, device=self._counts.device)
        self._sums.zero_()
        self._counts.zero_()
        self._num_samples = 0

    @property
    def num_samples(self) -> int:
        return self._num_samples

    def scores(self) -> np.ndarray:
        """float32 (num_heads_total,): mean per-sample confidence per head; zeros if nothing recorded."""
        return self.row_scores()[0]

    def row_scores(self) -> np.ndarray:
        """float32 (num_rows, num_heads_total): ``scores`` of each accumulator row."""
        return (self._sums / self._counts.clamp_min(1)).cpu().numpy().astype(np.float32)

    @contextmanager
    def recording(
        self, batch: dict[str, torch.Tensor], segments: list[tuple[int, int]] | None = None
    ) -> Iterator[None]:
        """Record every forward of the model on ``batch`` run inside the block; ``segments``
        (row, number of samples) sends consecutive runs of the batch to separate rows."""
        for module, spec in zip(self._modules, self._head_map.modules):
            impl = getattr(getattr(module, "config", None), "_attn_implementation", None)
            if impl != CONFIDENCE_ATTENTION:
                raise RuntimeError(
                    f"{spec.name} uses attention {impl!r}; call use_confidence_attention(model) before recording"
                )
        tokens, decoder = self._validity(batch)
        device = batch["input_ids"].device
        if self._sums.device != device:
            self._sums, self._counts = self._sums.to(device), self._counts.to(device)
        pairs = {"self": (tokens, tokens), "encoder_self": (tokens, tokens),
                 "decoder_self": (decoder, decoder), "cross": (decoder, tokens)}  # (queries, keys)
        offsets = self._head_map.head_offsets
        slots = {}
        for i, (module, spec) in enumerate(zip(self._modules, self._head_map.modules)):
            if id(module) in _ACTIVE:
                raise RuntimeError(f"{spec.name} is already being recorded; recordings cannot nest")
            query_valid, key_valid = pairs[spec.kind]
            slots[id(module)] = _Slot(spec.name, int(offsets[i]), spec.num_heads, query_valid, key_valid,
                                      self._sums, self._counts, segments)
        _ACTIVE.update(slots)
        try:
            yield
        finally:
            for key in slots:
                _ACTIVE.pop(key, None)
        silent = [s.name for s in slots.values() if s.calls == 0]
        if silent:
            raise RuntimeError(
                f"attention module {silent[0]} was not called while recording: run the model on the batch"
            )
        self._num_samples += int(batch["input_ids"].shape[0])

    def _validity(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Bool masks of the tokens that count (not padding, not EOS): encoder/input, decoder."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        tokens = mask.bool() if mask is not None else ids != self._pad
        tokens = tokens & self._not_eos(ids)
        if not self._encoder_decoder:
            return tokens, None
        labels = batch.get("labels")
        if "decoder_input_ids" in batch:
            dec_ids = batch["decoder_input_ids"]
            dec_mask = batch.get("decoder_attention_mask")
            decoder = dec_mask.bool() if dec_mask is not None else torch.ones_like(dec_ids, dtype=torch.bool)
            if labels is not None and labels.dim() == 2:
                decoder = decoder & (labels != LABEL_PAD)
        elif labels is not None and labels.dim() == 2:
            # Seq2seq LM: the model feeds labels shifted right; position t predicts labels[t].
            dec_ids = _shift_right(labels.masked_fill(labels == LABEL_PAD, self._pad), self._decoder_start)
            decoder = labels != LABEL_PAD
        else:
            # Sequence classification: T5/BART feed the input shifted right to the decoder.
            dec_ids = _shift_right(ids, self._decoder_start)
            present = mask.bool() if mask is not None else ids != self._pad
            decoder = _shift_right(present.long(), 1).bool()
        return tokens, decoder & self._not_eos(dec_ids)

    def _not_eos(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(ids, dtype=torch.bool) if self._eos is None else ids != self._eos
