"""Tokenising a split once into compact ragged arrays, and padding batches on demand.

Token ids are kept unpadded in one flat buffer per field (``Ragged``): uint16 when the
vocabulary fits, so 400k examples cost about 2 bytes per real token rather than a padded
(N, 512) int64 matrix. ``collate`` pads only a batch, only to its longest row.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch

from fedmpi.data.task import TextSplit

# Texts per tokenizer call: large enough for the fast tokenizer's batching to pay off,
# small enough that its Python lists of ids stay a few MB.
TOKENIZE_CHUNK = 8192
IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips


@dataclass(frozen=True)
class Ragged:
    """Variable-length int sequences in one buffer: row ``i`` is ``values[offsets[i]:offsets[i+1]]``."""

    values: np.ndarray  # uint16 when the vocab fits (<= 65535), else int32
    offsets: np.ndarray  # int64, len n + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} of {n}")
        i %= n
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.offsets.nbytes

    @classmethod
    def from_sequences(cls, sequences: list[list[int]], dtype: np.dtype) -> Ragged:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter(chain.from_iterable(sequences), dtype=dtype, count=int(offsets[-1]))
        return cls(values=values, offsets=offsets)

    @classmethod
    def concatenate(cls, parts: list[Ragged]) -> Ragged:
        if not parts:
            raise ValueError("nothing to concatenate")
        starts = np.cumsum([0] + [len(p.values) for p in parts[:-1]])
        offsets = np.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, starts)])
        return cls(values=np.concatenate([p.values for p in parts]), offsets=offsets)


@dataclass(frozen=True)
class TokenizedSplit:
    """A tokenised split: inputs, and class labels or target ids, per example."""

    kind: str
    input_ids: Ragged
    labels: np.ndarray | None  # int64
    target_ids: Ragged | None
    # Segment ids for sentence pairs, when the tokenizer has them (BERT-style models need
    # them to tell premise from hypothesis); None otherwise.
    token_type_ids: Ragged | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def id_dtype(tokenizer: Any) -> np.dtype:
    """uint16 when every token id fits in it, else int32."""
    return np.dtype(np.uint16) if len(tokenizer) - 1 <= np.iinfo(np.uint16).max else np.dtype(np.int32)


def tokenize_split(
    split: TextSplit,
    tokenizer: Any,
    *,
    kind: str,
    max_length: int,
    max_target_length: int = 64,
) -> TokenizedSplit:
    """Tokenise every example of ``split`` (truncated, with the tokenizer's special tokens).

    ``split.pairs``, when present, is encoded together with ``split.inputs`` as a text pair.
    Targets of a generation task are encoded with ``text_target`` so tokenizers that treat
    targets differently (e.g. T5, BART) do so.
    """
    if kind not in ("classification", "generation"):
        raise ValueError(f"unknown task kind {kind!r}")
    if kind == "classification" and split.labels is None:
        raise ValueError("classification split has no labels")
    if kind == "generation" and split.targets is None:
        raise ValueError("generation split has no targets")
    dtype = id_dtype(tokenizer)
    want_types = split.pairs is not None and "token_type_ids" in tokenizer.model_input_names
    inputs, types, targets = [], [], []
    for start in range(0, len(split), TOKENIZE_CHUNK):
        stop = start + TOKENIZE_CHUNK
        enc = tokenizer(
            split.inputs[start:stop],
            None if split.pairs is None else split.pairs[start:stop],
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,  # rebuilt from lengths in collate
            return_token_type_ids=want_types,
        )
        inputs.append(Ragged.from_sequences(enc["input_ids"], dtype))
        if want_types:
            types.append(Ragged.from_sequences(enc["token_type_ids"], np.dtype(np.uint8)))
        if kind == "generation":
            enc = tokenizer(
                text_target=split.targets[start:stop],
                truncation=True,
                max_length=max_target_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            targets.append(Ragged.from_sequences(enc["input_ids"], dtype))
    return TokenizedSplit(
        kind=kind,
        input_ids=_join(inputs, dtype),
        labels=None if kind == "generation" else np.asarray(split.labels, dtype=np.int64),
        target_ids=_join(targets, dtype) if kind == "generation" else None,
        token_type_ids=_join(types, np.dtype(np.uint8)) if want_types else None,
    )


def _join(chunks: list[Ragged], dtype: np.dtype) -> Ragged:
    # An empty split has no chunks; it still gets a (zero-row) Ragged.
    return Ragged.concatenate(chunks) if chunks else Ragged.from_sequences([], dtype)


def pad_rows(ragged: Ragged, indices: np.ndarray, pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``indices`` right-padded to the longest of them: (ids, mask), both (B, T) long."""
    starts = ragged.offsets[indices]
    lengths = ragged.offsets[indices + 1] - starts
    width = int(lengths.max()) if len(indices) else 0
    positions = np.arange(width, dtype=np.int64)
    mask = positions[None, :] < lengths[:, None]
    out = np.full((len(indices), width), pad_value, dtype=np.int64)
    # One gather for the whole batch: position j of row b sits at values[starts[b] + j].
    out[mask] = ragged.values[(starts[:, None] + positions[None, :])[mask]]
    return torch.from_numpy(out), torch.from_numpy(mask.astype(np.int64))


def collate(split: TokenizedSplit, indices: np.ndarray, *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """A padded batch of examples ``indices``: input_ids, attention_mask, labels (and
    token_type_ids for pairs). Generation labels are the target ids with -100 at padding."""
    idx = np.asarray(indices, dtype=np.int64)
    input_ids, attention_mask = pad_rows(split.input_ids, idx, pad_token_id)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if split.token_type_ids is not None:
        batch["token_type_ids"] = pad_rows(split.token_type_ids, idx, 0)[0]
    if split.kind == "classification":
        batch["labels"] = torch.from_numpy(split.labels[idx])
    else:
        batch["labels"] = pad_rows(split.target_ids, idx, IGNORE_INDEX)[0]
    return batch
