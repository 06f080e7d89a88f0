"""Loading a task by source name: a registry of loaders and ``load_task``, the one entry point.

Each loader turns its source (generated, local JSON Lines, or a Hugging Face dataset) into
a ``TaskData``; ``load_task`` looks the loader up and then applies the optional seeded
subsetting, which is therefore the same for every source. Adding a source is one
decorated function here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedmpi.data.embedded import make_embedded_task
from fedmpi.data.hub import load_hub_dataset
from fedmpi.data.records import column, encode_labels, read_jsonl, strip_newsgroup_header, text_column
from fedmpi.data.task import TaskData, TextSplit, subsample


@dataclass(frozen=True)
class SourceOptions:
    """What a loader may use; each reads only the fields that concern its source."""

    path: str | None = None
    train_file: str | None = None
    eval_file: str | None = None
    input_field: str = "text"
    label_field: str = "label"
    target_field: str | None = None
    seed: int = 0
    strip_headers: bool = True
    num_train: int = 4000
    num_eval: int = 800


Loader = Callable[[SourceOptions], TaskData]
SOURCES: dict[str, Loader] = {}

# Streams for subsetting, apart from those the embedded generator draws from the same seed.
_SUBSET_STREAM = {"train": 11, "eval": 12}

_JSONL_HINT = "data.source=jsonl data.train_file=<train.jsonl.gz> data.eval_file=<eval.jsonl.gz>"


def register_source(name: str) -> Callable[[Loader], Loader]:
    def add(loader: Loader) -> Loader:
        if name in SOURCES:
            raise ValueError(f"data source {name!r} registered twice")
        SOURCES[name] = loader
        return loader

    return add


def load_task(
    source: str,
    *,
    path: str | None = None,
    train_file: str | None = None,
    eval_file: str | None = None,
    input_field: str = "text",
    label_field: str = "label",
    target_field: str | None = None,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    strip_headers: bool = True,
    num_train: int = 4000,
    num_eval: int = 800,
) -> TaskData:
    """Load ``source`` and, if asked, keep a seeded random subset of each split (in file order)."""
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; known sources: {', '.join(sorted(SOURCES))}")
    options = SourceOptions(
        path=path, train_file=train_file, eval_file=eval_file, input_field=input_field,
        label_field=label_field, target_field=target_field, seed=seed,
        strip_headers=strip_headers, num_train=num_train, num_eval=num_eval,
    )
    task = SOURCES[source](options)
    if max_train_samples is None and max_eval_samples is None:
        return task
    return TaskData(
        name=task.name,
        kind=task.kind,
        train=subsample(task.train, max_train_samples, np.random.default_rng([seed, _SUBSET_STREAM["train"]])),
        eval=subsample(task.eval, max_eval_samples, np.random.default_rng([seed, _SUBSET_STREAM["eval"]])),
        label_names=task.label_names,
    )


def _require_dir(path: str | None, source: str) -> Path:
    if path is None:
        raise ValueError(f"data source {source!r} needs data.path")
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"data directory not found for {source!r}: {directory}")
    return directory


def _rows_to_split(rows: list[dict[str, Any]], where: str, *, input_field: str,
                   target_field: str | None = None) -> TextSplit:
    """A split with texts only; class labels are filled in by the caller (shared mapping)."""
    return TextSplit(
        inputs=text_column(rows, input_field, where),
        labels=None,
        targets=None if target_field is None else text_column(rows, target_field, where),
    )


@register_source("embedded")
def _load_embedded(opts: SourceOptions) -> TaskData:
    return make_embedded_task(seed=opts.seed, num_train=opts.num_train, num_eval=opts.num_eval)


@register_source("jsonl")
def _load_jsonl(opts: SourceOptions) -> TaskData:
    if opts.train_file is None or opts.eval_file is None:
        raise ValueError("data source 'jsonl' needs both data.train_file and data.eval_file")
    train_rows, eval_rows = read_jsonl(opts.train_file), read_jsonl(opts.eval_file)
    fields = dict(input_field=opts.input_field, target_field=opts.target_field)
    train = _rows_to_split(train_rows, opts.train_file, **fields)
    evl = _rows_to_split(eval_rows, opts.eval_file, **fields)
    if opts.target_field is not None:
        return TaskData(name="jsonl", kind="generation", train=train, eval=evl, label_names=None)
    train_ids, eval_ids, names = encode_labels(
        column(train_rows, opts.label_field, opts.train_file),
        column(eval_rows, opts.label_field, opts.eval_file),
        where=f"{opts.train_file} + {opts.eval_file}",
    )
    return TaskData(name="jsonl", kind="classification", train=replace(train, labels=train_ids),
                    eval=replace(evl, labels=eval_ids), label_names=names)


@register_source("20newsgroups")
def _load_20newsgroups(opts: SourceOptions) -> TaskData:
    if opts.path is None:
        # SetFit's copy comes with headers, footers and quotes already removed.
        data = load_hub_dataset("SetFit/20_newsgroups", local_alternative=(
            "data.path=<folder with train.jsonl.gz, test.jsonl.gz, labels.json> or " + _JSONL_HINT))
        names: dict[int, str] = {}
        for split in ("train", "test"):
            names.update(zip(data[split]["label"], data[split]["label_text"]))
        label_names = tuple(names[i] for i in range(len(names)))
        splits = [TextSplit(inputs=list(data[s]["text"]), labels=np.asarray(data[s]["label"], dtype=np.int64),
                            targets=None) for s in ("train", "test")]
        return TaskData(name="20newsgroups", kind="classification", train=splits[0], eval=splits[1],
                        label_names=label_names)

    directory = _require_dir(opts.path, "20newsgroups")
    labels_file = directory / "labels.json"
    if not labels_file.is_file():
        raise ValueError(f"data file not found: {labels_file}")
    label_names = tuple(json.loads(labels_file.read_text(encoding="utf-8")))
    splits = []
    for file_name in ("train.jsonl.gz", "test.jsonl.gz"):
        file = directory / file_name
        rows = read_jsonl(file)
        texts = text_column(rows, "text", str(file))
        if opts.strip_headers:
            texts = [strip_newsgroup_header(t) for t in texts]
        labels = np.asarray(column(rows, "label", str(file)), dtype=np.int64)
        if labels.min() < 0 or labels.max() >= len(label_names):
            raise ValueError(f"{file}: label ids outside 0..{len(label_names) - 1} of {labels_file}")
        splits.append(TextSplit(inputs=texts, labels=labels, targets=None))
    return TaskData(name="20newsgroups", kind="classification", train=splits[0], eval=splits[1],
                    label_names=label_names)


@register_source("e2e_nlg")
def _load_e2e_nlg(opts: SourceOptions) -> TaskData:
    if opts.path is None:
        data = load_hub_dataset("tuetschek/e2e_nlg", local_alternative=(
            "data.path=<folder with train.jsonl.gz, validation.jsonl.gz> or "
            "data.source=jsonl data.input_field=<field> data.target_field=<field> "
            "data.train_file=<file> data.eval_file=<file>"))
        splits = [TextSplit(inputs=list(data[s]["meaning_representation"]), labels=None,
                            targets=list(data[s]["human_reference"])) for s in ("train", "validation")]
    else:
        directory = _require_dir(opts.path, "e2e_nlg")
        splits = [
            _rows_to_split(read_jsonl(directory / f), str(directory / f), input_field="source", target_field="target")
            for f in ("train.jsonl.gz", "validation.jsonl.gz")
        ]
    return TaskData(name="e2e_nlg", kind="generation", train=splits[0], eval=splits[1], label_names=None)


@register_source("multinli")
def _load_multinli(opts: SourceOptions) -> TaskData:
    data = load_hub_dataset("nyu-mll/multi_nli", local_alternative=(
        "data.source=jsonl with the premise as data.input_field (the jsonl source reads single texts, not pairs)"))
    label_feature = data["train"].features["label"]
    label_names = tuple(getattr(label_feature, "names", ("entailment", "neutral", "contradiction")))

    def split_of(parts: tuple[str, ...]) -> TextSplit:
        premises: list[str] = []
        hypotheses: list[str] = []
        labels: list[np.ndarray] = []
        for part in parts:
            ds = data[part]
            keep = np.asarray(ds["label"], dtype=np.int64)
            mask = keep >= 0  # -1 marks pairs without annotator agreement
            premises += [t for t, k in zip(ds["premise"], mask) if k]
            hypotheses += [t for t, k in zip(ds["hypothesis"], mask) if k]
            labels.append(keep[mask])
        return TextSplit(inputs=premises, labels=np.concatenate(labels), targets=None, pairs=hypotheses)

    # The evaluation set is matched + mismatched validation, merged (method spec).
    return TaskData(name="multinli", kind="classification", train=split_of(("train",)),
                    eval=split_of(("validation_matched", "validation_mismatched")), label_names=label_names)


@register_source("xlsum")
def _load_xlsum(opts: SourceOptions) -> TaskData:
    data = load_hub_dataset("csebuetnlp/xlsum", "english", local_alternative=(
        "data.source=jsonl data.input_field=text data.target_field=summary "
        "data.train_file=<file> data.eval_file=<file>"))
    splits = [TextSplit(inputs=list(data[s]["text"]), labels=None, targets=list(data[s]["summary"]))
              for s in ("train", "validation")]
    return TaskData(name="xlsum", kind="generation", train=splits[0], eval=splits[1], label_names=None)
