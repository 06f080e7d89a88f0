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
    # Causal LM generation: input_ids[i] is prompt + EOS + target + EOS, and its first
    # prompt_lengths[i] tokens (prompt + EOS) are the prompt; None for other layouts.
    prompt_lengths: np.ndarray | None = None
    max_target_length: int = 64  # the target truncation, also the generation budget (max_new_tokens)

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
    causal_lm: bool = False,
) -> TokenizedSplit:
    """Tokenise every example of ``split`` (truncated, with the tokenizer's special tokens).

    ``split.pairs``, when present, is encoded together with ``split.inputs`` as a text pair.
    Targets of a generation task are encoded with ``text_target`` so tokenizers that treat
    targets differently (e.g. T5, BART) do so. ``causal_lm`` (generation with a decoder-only
    model) lays each example out as one sequence instead; see ``tokenize_causal``.
    """
    if causal_lm:
        if kind != "generation":
            raise ValueError(f"causal_lm tokenisation is for generation tasks, not {kind!r}")
        return tokenize_causal(split, tokenizer, max_length=max_length, max_target_length=max_target_length)
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
        max_target_length=max_target_length,
    )


def separator_id(tokenizer: Any) -> int:
    """The token that ends a prompt and a target: EOS, or [SEP] for BERT-style tokenizers."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError("causal LM generation needs a tokenizer with an EOS (or SEP) token")
    return int(eos)


def tokenize_causal(split: TextSplit, tokenizer: Any, *, max_length: int, max_target_length: int) -> TokenizedSplit:
    """Generation for a decoder-only model: ``prompt EOS target EOS`` as one sequence.

    The prompt (with the pair text, if any) is cut to ``max_length - 1`` tokens and the
    target to ``max_target_length - 1``, each then closed by EOS; no other special tokens.
    ``prompt_lengths`` marks where the target starts, so that ``collate`` can keep the loss
    to the target (and its closing EOS) and evaluation can generate from the prompt alone.
    """
    if split.targets is None:
        raise ValueError("generation split has no targets")
    if max_length < 2 or max_target_length < 2:
        raise ValueError("causal LM generation needs max_length and max_target_length >= 2 (text + EOS)")
    dtype, eos = id_dtype(tokenizer), separator_id(tokenizer)
    sequences, prompt_lengths, targets = [], [], []
    for start in range(0, len(split), TOKENIZE_CHUNK):
        stop = start + TOKENIZE_CHUNK
        plain = dict(add_special_tokens=False, truncation=True, return_attention_mask=False, return_token_type_ids=False)
        prompts = tokenizer(split.inputs[start:stop], None if split.pairs is None else split.pairs[start:stop],
                            max_length=max_length - 1, **plain)["input_ids"]
        answers = tokenizer(split.targets[start:stop], max_length=max_target_length - 1, **plain)["input_ids"]
        for prompt, answer in zip(prompts, answers):
            sequences.append(prompt + [eos] + answer + [eos])
            prompt_lengths.append(len(prompt) + 1)
            targets.append(answer + [eos])
    return TokenizedSplit(
        kind="generation",
        input_ids=Ragged.from_sequences(sequences, dtype),
        labels=None,
        target_ids=Ragged.from_sequences(targets, dtype),
        prompt_lengths=np.asarray(prompt_lengths, dtype=np.int64),
        max_target_length=max_target_length,
    )


def _join(chunks: list[Ragged], dtype: np.dtype) -> Ragged:
    # An empty split has no chunks; it still gets a (zero-row) Ragged.
    return Ragged.concatenate(chunks) if chunks else Ragged.from_sequences([], dtype)


def pad_rows(
    ragged: Ragged, indices: np.ndarray, pad_value: int, *, lengths: np.ndarray | None = None, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``indices`` padded to the longest of them: (ids, mask), both (B, T) long.

    ``lengths`` takes only each row's first ``lengths[b]`` tokens; ``left`` pads on the left
    (what decoder-only generation needs, so every prompt ends at the last position).
    """
    starts = ragged.offsets[indices]
    if lengths is None:
        lengths = ragged.offsets[indices + 1] - starts
    width = int(lengths.max()) if len(indices) else 0
    positions = np.arange(width, dtype=np.int64)
    shift = (width - lengths)[:, None] if left else np.zeros((len(indices), 1), dtype=np.int64)
    token = positions[None, :] - shift  # token index shown at each position (< 0: left padding)
    mask = (token >= 0) & (token < lengths[:, None])
    out = np.full((len(indices), width), pad_value, dtype=np.int64)
    # One gather for the whole batch: token j of row b sits at values[starts[b] + j].
    out[mask] = ragged.values[(starts[:, None] + token)[mask]]
    return torch.from_numpy(out), torch.from_numpy(mask.astype(np.int64))


def collate(split: TokenizedSplit, indices: np.ndarray, *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """A padded batch of examples ``indices``: input_ids, attention_mask, labels (and
    token_type_ids for pairs). Generation labels are the target ids with -100 at padding;
    a causal LM's are its input ids with -100 on the prompt and the padding, so the loss
    covers the target tokens (and their closing EOS) only."""
    idx = np.asarray(indices, dtype=np.int64)
    input_ids, attention_mask = pad_rows(split.input_ids, idx, pad_token_id)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if split.token_type_ids is not None:
        batch["token_type_ids"] = pad_rows(split.token_type_ids, idx, 0)[0]
    if split.kind == "classification":
        batch["labels"] = torch.from_numpy(split.labels[idx])
    elif split.prompt_lengths is not None:
        prompt = torch.arange(input_ids.shape[1])[None, :] < torch.from_numpy(split.prompt_lengths[idx])[:, None]
        batch["labels"] = input_ids.masked_fill(prompt | (attention_mask == 0), IGNORE_INDEX)
    else:
        batch["labels"] = pad_rows(split.target_ids, idx, IGNORE_INDEX)[0]
    return batch


def collate_prompts(split: TokenizedSplit, indices: np.ndarray, *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """A causal LM's prompts (prompt + EOS) of examples ``indices``, left-padded, for generation."""
    if split.prompt_lengths is None:
        raise ValueError("only a causal LM split has prompts to generate from")
    idx = np.asarray(indices, dtype=np.int64)
    input_ids, attention_mask = pad_rows(split.input_ids, idx, pad_token_id, lengths=split.prompt_lengths[idx], left=True)
    return {"input_ids": input_ids, "attention_mask": attention_mask}
