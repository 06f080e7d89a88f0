"""Plain containers for a loaded task (texts and labels, before tokenising) and subsetting.

Everything here is model-agnostic: texts stay strings, class labels are int64 ids, and a
sentence-pair task keeps its second text apart (``pairs``) so each tokenizer can encode
the pair with its own special tokens instead of a hard-coded separator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("classification", "generation")


@dataclass(frozen=True)
class TextSplit:
    """One split of a task: ``inputs[i]`` (and ``pairs[i]``) with ``labels[i]`` or ``targets[i]``."""

    inputs: list[str]
    labels: np.ndarray | None  # int64 class ids (classification)
    targets: list[str] | None  # reference texts (generation)
    pairs: list[str] | None = None  # second text of a sentence pair (e.g. the NLI hypothesis)

    def __post_init__(self) -> None:
        n = len(self.inputs)
        if self.labels is not None:
            if self.labels.dtype != np.int64 or self.labels.ndim != 1:
                raise ValueError(f"labels must be a 1-d int64 array, got {self.labels.dtype} {self.labels.shape}")
            if len(self.labels) != n:
                raise ValueError(f"{len(self.labels)} labels for {n} inputs")
        for name in ("targets", "pairs"):
            other = getattr(self, name)
            if other is not None and len(other) != n:
                raise ValueError(f"{len(other)} {name} for {n} inputs")

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class TaskData:
    """A task: its train and eval splits, what kind it is, and the class names if any."""

    name: str
    kind: str  # "classification" | "generation"
    train: TextSplit
    eval: TextSplit
    label_names: tuple[str, ...] | None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")
        for split_name, split in (("train", self.train), ("eval", self.eval)):
            if self.kind == "classification" and split.labels is None:
                raise ValueError(f"classification task {self.name!r}: {split_name} split has no labels")
            if self.kind == "generation" and split.targets is None:
                raise ValueError(f"generation task {self.name!r}: {split_name} split has no targets")

    @property
    def num_labels(self) -> int | None:
        return None if self.label_names is None else len(self.label_names)


def take(split: TextSplit, indices: np.ndarray) -> TextSplit:
    """The rows ``indices`` of ``split``, in that order."""
    idx = np.asarray(indices, dtype=np.int64)

    def pick(texts: list[str] | None) -> list[str] | None:
        return None if texts is None else [texts[i] for i in idx]

    return TextSplit(
        inputs=pick(split.inputs),
        labels=None if split.labels is None else split.labels[idx],
        targets=pick(split.targets),
        pairs=pick(split.pairs),
    )


def subsample(split: TextSplit, max_samples: int | None, rng: np.random.Generator) -> TextSplit:
    """A random subset of at most ``max_samples`` rows, kept in their original order.

    Sorting the chosen indices keeps the file order, so a subset of a subset-free run is
    recognisable and grouped rows (E2E's references of one source) stay adjacent.
    """
    if max_samples is None or max_samples >= len(split):
        return split
    if max_samples < 1:
        raise ValueError(f"max samples must be >= 1 or None, got {max_samples}")
    chosen = np.sort(rng.choice(len(split), size=max_samples, replace=False))
    return take(split, chosen)
