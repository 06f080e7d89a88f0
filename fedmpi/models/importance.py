"""Head confidence (paper Eq. 6), measured beside fast attention, without full attention maps.

method-spec "Importance (Eq. 6)": a head's importance is its confidence (Voita et al.
2019), the largest post-softmax attention weight of each query token, with padding and
excluded key columns (EOS by default, see ``fedmpi/models/exclusion.py``) zeroed first (no
renormalisation), averaged over the valid queries of a sample, then over the client's
samples. A head that parks its attention on EOS is therefore not confident.

With s the attention scores of one query (mask and T5 position bias included), the
weights are softmax(s), so the largest weight over the valid keys V is
``exp(max_{j in V} s_j - logsumexp_j s_j)``. ``chunked_confidence`` computes exactly this
over blocks of queries and keys (a running max and a running logsumexp), so it never holds
a (B, H, T, T) tensor. The attention function registered as ``CONFIDENCE_ATTENTION`` is
transformers' SDPA attention (the same output, the same kernels); only while a
``HeadConfidence`` records, it also runs ``chunked_confidence`` on the detached q and k,
under no_grad. Attention modules are recognised by identity (the ``module`` argument every
model passes to its attention function).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from fedmpi.models.heads import HeadMap

CONFIDENCE_ATTENTION = "fedmpi_sdpa"
LABEL_PAD = -100  # Hugging Face's ignore index in seq2seq labels
# Queries x keys per block of the confidence pass: 128 x 128 scores per (sample, head).
BLOCK = 128
KEPT_HEADS_ATTR = "fedmpi_kept_heads"  # set by fedmpi.models.head_subset while heads are removed


def confidence(weights: torch.Tensor, query_valid: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """Eq. 6 from full post-softmax weights (B, H, Tq, Tk): the definition, and the tests' reference.

    For each valid query, the max over keys after zeroing invalid key columns (no
    renormalisation), averaged over the valid queries (bool (B, Tq)); a sample with no
    valid query scores 0.
    """
    peak = (weights * key_valid[:, None, None, :].to(weights.dtype)).amax(dim=-1)  # (B, H, Tq)
    q = query_valid[:, None, :].to(weights.dtype)
    return (peak * q).sum(dim=-1) / q.sum(dim=-1).clamp_min(1.0)


def _block_scores(query, key, q0, q1, k0, k1, scaling, attention_mask, position_bias, causal) -> torch.Tensor:
    """float32 scores (B, H, q1-q0, k1-k0) of one block, as the softmax sees them."""
    s = torch.matmul(query[:, :, q0:q1], key[:, :, k0:k1].transpose(-1, -2)).float() * scaling
    if position_bias is not None:
        s = s + position_bias[:, :, q0:q1, k0:k1].float()
    low = torch.finfo(torch.float32).min  # eager's mask value: masked keys weigh exactly 0
    if attention_mask is not None:
        rows = slice(q0, q1) if attention_mask.shape[-2] > 1 else slice(None)
        m = attention_mask[:, :, rows, k0:k1]
        s = s.masked_fill(~m, low) if m.dtype == torch.bool else s + m.float()
    elif causal:
        future = torch.arange(k0, k1, device=s.device)[None, :] > torch.arange(q0, q1, device=s.device)[:, None]
        s = s.masked_fill(future, low)
    return s


def chunked_confidence(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scaling: float,
    attention_mask: torch.Tensor | None,
    position_bias: torch.Tensor | None,
    causal: bool,
    query_valid: torch.Tensor,
    key_valid: torch.Tensor,
    block: int = BLOCK,
) -> torch.Tensor:
    """Per-sample, per-head Eq. 6 (B, H) from q (B, H, Tq, D) and k, block by block.

    ``attention_mask`` is what SDPA receives (bool: True attends; float: additive) and
    ``causal`` stands for it when it is None; ``position_bias`` is T5's additive bias.
    Equal to ``confidence`` of the eager weights, with blocks of at most ``block`` queries
    by ``block`` keys.
    """
    with torch.no_grad():
        query, key = query.detach(), key.detach()
        if key.shape[1] != query.shape[1]:  # grouped-query attention: share each key head
            key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        b, h, tq, _ = query.shape
        tk = key.shape[-2]
        peaks = []
        for q0 in range(0, tq, block):
            q1 = min(q0 + block, tq)
            lse = torch.full((b, h, q1 - q0), -torch.inf, device=query.device)
            top = torch.full((b, h, q1 - q0), -torch.inf, device=query.device)
            for k0 in range(0, tk, block):
                k1 = min(k0 + block, tk)
                s = _block_scores(query, key, q0, q1, k0, k1, scaling, attention_mask, position_bias, causal)
                lse = torch.logaddexp(lse, s.logsumexp(dim=-1))
                valid = key_valid[:, None, None, k0:k1]
                top = torch.maximum(top, s.masked_fill(~valid, -torch.inf).amax(dim=-1))
            peaks.append(torch.exp(top - lse))  # no valid key: exp(-inf) = 0, as zeroed columns give
        peak = torch.cat(peaks, dim=-1)  # (B, H, Tq)
        q = query_valid[:, None, :]
        return torch.where(q, peak, 0.0).sum(dim=-1) / q.sum(dim=-1).clamp_min(1)


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

    def record(self, per_sample: torch.Tensor) -> None:
        heads = slice(self.first_head, self.first_head + self.num_heads)
        has_query = self.query_valid.any(dim=1)
        start = 0
        for row, count in self.segments or [(0, per_sample.shape[0])]:
            part = slice(start, start + count)
            self.sums[row, heads] += per_sample[part].sum(dim=0).to(torch.float64)
            # Samples without any valid query measure nothing; Eq. 6 averages the others.
            self.counts[row, heads] += has_query[part].sum()
            start += count
        self.calls += 1

    def check(self, query: torch.Tensor, key: torch.Tensor) -> None:
        b, h, tq, _ = query.shape
        tk = key.shape[-2]
        self._widen_for_virtual_tokens(tq, tk)
        if (b, tq) != tuple(self.query_valid.shape) or tk != self.key_valid.shape[1] or h != self.num_heads:
            raise RuntimeError(
                f"attention in {self.name} saw q of shape {tuple(query.shape)} and {tk} keys, but the batch given to "
                f"recording() implies (B, {self.num_heads}, {self.query_valid.shape[1]}) queries and "
                f"{self.key_valid.shape[1]} keys with B={self.query_valid.shape[0]}: run the model once on exactly "
                "that batch, without a KV cache and with all heads"
            )

    def _widen_for_virtual_tokens(self, tq: int, tk: int) -> None:
        """Prompt and prefix tuning prepend virtual tokens: as keys they count, as queries they do not."""
        extra_q, extra_k = tq - self.query_valid.shape[1], tk - self.key_valid.shape[1]
        if extra_k > 0:
            pad = self.key_valid.new_ones((self.key_valid.shape[0], extra_k))
            self.key_valid = torch.cat([pad, self.key_valid], dim=1)
        if extra_q > 0:
            pad = self.query_valid.new_zeros((self.query_valid.shape[0], extra_q))
            self.query_valid = torch.cat([pad, self.query_valid], dim=1)


# id(attention module) -> its slot, only while some HeadConfidence is recording.
_ACTIVE: dict[int, _Slot] = {}


def confidence_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention; it also feeds the active recorder (before dropout, no grad)."""
    kept = getattr(module, KEPT_HEADS_ATTR, None)
    if kept is not None and position_bias is not None and position_bias.shape[1] != query.shape[1]:
        position_bias = position_bias.index_select(1, kept)  # T5 shares one bias over layers: take the kept heads
    slot = _ACTIVE.get(id(module))
    if slot is not None:
        slot.check(query, key)
        # The same causality rule as sdpa_attention_forward's.
        causal_flag = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        slot.record(chunked_confidence(
            query, key, scaling=query.size(-1) ** -0.5 if scaling is None else scaling,
            attention_mask=attention_mask, position_bias=position_bias,
            causal=bool(query.shape[2] > 1 and attention_mask is None and causal_flag),
            query_valid=slot.query_valid, key_valid=slot.key_valid,
        ))  # fmt: skip
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
        position_bias=position_bias, **kwargs,
    )  # fmt: skip


ALL_ATTENTION_FUNCTIONS.register(CONFIDENCE_ATTENTION, confidence_attention_forward)
# Masks are built per implementation name; ours consumes exactly SDPA's.
ALL_MASK_ATTENTION_FUNCTIONS.register(CONFIDENCE_ATTENTION, sdpa_mask)


def use_confidence_attention(model: nn.Module) -> None:
    """Switch ``model``'s attention implementation to the recording one (SDPA underneath)."""
    from fedmpi.models.build import set_attention  # build imports this module

    set_attention(model, CONFIDENCE_ATTENTION)


def _shift_right(ids: torch.Tensor, first: int) -> torch.Tensor:
    out = ids.new_empty(ids.shape)
    out[:, 1:] = ids[:, :-1]
    out[:, 0] = first
    return out


@dataclass(frozen=True)
class ImportanceOptions:
    """Which tokens Eq. 6 looks at (config ``strategy.importance_exclude`` / ``skip_first_queries``)."""

    excluded_ids: frozenset[int]  # key (and query) tokens left out of the max and the mean: EOS by default
    decoder_excluded_ids: frozenset[int]  # the same on the decoder side (may add the decoder start token)
    skip_first_queries: int = 0  # in causal self-attention, queries 0..k-1 are not averaged


class HeadConfidence:
    """Accumulates Eq. 6 per global head (``HeadMap`` order) over the batches it records."""

    def __init__(self, model: nn.Module, head_map: HeadMap, *, options: ImportanceOptions, pad_token_id: int) -> None:
        named = dict(model.named_modules())
        missing = [m.name for m in head_map.modules if m.name not in named]
        if missing:
            raise ValueError(f"head map does not match the model: no module {missing[0]!r}")
        self._modules = [named[m.name] for m in head_map.modules]
        self._head_map = head_map
        self._options = options
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
            if self._options.skip_first_queries and spec.kind != "cross" and getattr(module, "is_causal", False):
                # Causal query t sees t + 1 keys, so early queries look confident whatever the head does.
                query_valid = query_valid.clone()
                query_valid[:, : self._options.skip_first_queries] = False
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
        """Bool masks of the tokens that count (present, not excluded): encoder/input, decoder."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        tokens = mask.bool() if mask is not None else ids != self._pad
        tokens = tokens & _not_in(ids, self._options.excluded_ids)
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
        return tokens, decoder & _not_in(dec_ids, self._options.decoder_excluded_ids)


def _not_in(ids: torch.Tensor, excluded: frozenset[int]) -> torch.Tensor:
    if not excluded:
        return torch.ones_like(ids, dtype=torch.bool)
    return ~torch.isin(ids, torch.tensor(sorted(excluded), dtype=ids.dtype, device=ids.device))
