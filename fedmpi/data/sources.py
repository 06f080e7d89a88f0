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
from fedmpi.data.local import first_fields, read_split, split_names
from fedmpi.data.records import as_texts, column, encode_labels, read_jsonl, strip_newsgroup_header, text_column
from fedmpi.data.task import TaskData, TextSplit, subsample, take


@dataclass(frozen=True)
class SourceOptions:
    """What a loader may use; each reads only the fields that concern its source."""

    path: str | None = None
    train_file: str | None = None
    eval_file: str | None = None
    input_field: str = "text"
    pair_field: str | None = None  # jsonl: the second text of a sentence pair
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
    pair_field: str | None = None,
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
        path=path, train_file=train_file, eval_file=eval_file, input_field=input_field, pair_field=pair_field,
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
                   target_field: str | None = None, pair_field: str | None = None) -> TextSplit:
    """A split with texts only; class labels are filled in by the caller (shared mapping)."""
    return TextSplit(
        inputs=text_column(rows, input_field, where),
        labels=None,
        targets=None if target_field is None else text_column(rows, target_field, where),
        pairs=None if pair_field is None else text_column(rows, pair_field, where),
    )


@register_source("embedded")
def _load_embedded(opts: SourceOptions) -> TaskData:
    return make_embedded_task(seed=opts.seed, num_train=opts.num_train, num_eval=opts.num_eval)


@register_source("jsonl")
def _load_jsonl(opts: SourceOptions) -> TaskData:
    if opts.train_file is None or opts.eval_file is None:
        raise ValueError("data source 'jsonl' needs both data.train_file and data.eval_file")
    train_rows, eval_rows = read_jsonl(opts.train_file), read_jsonl(opts.eval_file)
    fields = dict(input_field=opts.input_field, target_field=opts.target_field, pair_field=opts.pair_field)
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


# MultiNLI's (and SICK's) classes, in the GLUE id order; -1 (or "-") marks pairs without a gold label.
NLI_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
NLI_FIELDS = ("premise", "hypothesis", "label")


def _nli_split(columns: dict[str, list[Any]], where: str, label_names: tuple[str, ...]) -> TextSplit:
    """Premise/hypothesis pairs with their class ids, dropping pairs without a gold label."""
    raw = columns["label"]
    lookup = {name: i for i, name in enumerate(label_names)}
    ids = []
    for i, v in enumerate(raw):
        if isinstance(v, str):
            v = -1 if v == "-" else lookup.get(v)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not -1 <= v < len(label_names):
            raise ValueError(f"{where}: label {raw[i]!r} of row {i} is neither an id in -1..{len(label_names) - 1} "
                             f"nor one of {list(label_names)}")
        ids.append(int(v))
    labels = np.asarray(ids, dtype=np.int64)
    keep = np.flatnonzero(labels >= 0)
    premises = as_texts(columns["premise"], "premise", where)
    hypotheses = as_texts(columns["hypothesis"], "hypothesis", where)
    return TextSplit(inputs=[premises[i] for i in keep], labels=labels[keep], targets=None,
                     pairs=[hypotheses[i] for i in keep])


def _nli_from_folder(name: str, directory: Path, train: str, evals: tuple[str, ...]) -> TaskData:
    """An NLI task from an offline folder: split ``train`` for training, ``evals`` merged for evaluation."""
    def split_of(parts: tuple[str, ...]) -> TextSplit:
        loaded = [_nli_split(read_split(directory, p, NLI_FIELDS), f"{directory} (split {p!r})", NLI_LABELS)
                  for p in parts]
        return TextSplit(inputs=[t for x in loaded for t in x.inputs], labels=np.concatenate([x.labels for x in loaded]),
                         targets=None, pairs=[t for x in loaded for t in x.pairs])

    return TaskData(name=name, kind="classification", train=split_of((train,)), eval=split_of(evals),
                    label_names=NLI_LABELS)


# The evaluation set is matched + mismatched validation, merged (method spec).
MULTINLI_EVAL_SPLITS = ("validation_matched", "validation_mismatched")


@register_source("multinli")
def _load_multinli(opts: SourceOptions) -> TaskData:
    if opts.path is not None:
        return _nli_from_folder("multinli", _require_dir(opts.path, "multinli"), "train", MULTINLI_EVAL_SPLITS)
    data = load_hub_dataset("nyu-mll/multi_nli", local_alternative=(
        "data.path=<folder with train and validation_matched/_mismatched splits: JSON Lines with premise, "
        "hypothesis, label, or a datasets save_to_disk folder>, or data.source=jsonl data.input_field=premise "
        "data.pair_field=hypothesis data.train_file=<file> data.eval_file=<file>"))
    label_feature = data["train"].features["label"]
    label_names = tuple(getattr(label_feature, "names", NLI_LABELS))

    def split_of(parts: tuple[str, ...]) -> TextSplit:
        loaded = [_nli_split({f: list(data[p][f]) for f in NLI_FIELDS}, f"nyu-mll/multi_nli {p}", label_names)
                  for p in parts]
        return TextSplit(inputs=[t for x in loaded for t in x.inputs], labels=np.concatenate([x.labels for x in loaded]),
                         targets=None, pairs=[t for x in loaded for t in x.pairs])

    return TaskData(name="multinli", kind="classification", train=split_of(("train",)),
                    eval=split_of(MULTINLI_EVAL_SPLITS), label_names=label_names)


@register_source("sick")
def _load_sick(opts: SourceOptions) -> TaskData:
    """SICK (SemEval-2014), the offline stand-in for MultiNLI: train on TRAIN, evaluate on TEST."""
    return _nli_from_folder("sick", _require_dir(opts.path, "sick"), "train", ("test",))


# XL-Sum's own field names first, then the source/target of ../shared/data/xlsum_en.
XLSUM_FIELDS: tuple[tuple[str, str], ...] = (("text", "summary"), ("source", "target"))
# A folder with one unsplit file (``all``) is split deterministically: every 10th pair evaluates.
XLSUM_EVAL_EVERY = 10


@register_source("xlsum")
def _load_xlsum(opts: SourceOptions) -> TaskData:
    if opts.path is not None:
        return _xlsum_from_folder(_require_dir(opts.path, "xlsum"))
    data = load_hub_dataset("csebuetnlp/xlsum", "english", local_alternative=(
        "data.path=<folder with train and validation splits (text, summary): JSON Lines or a datasets "
        "save_to_disk folder>, or data.source=jsonl data.input_field=text data.target_field=summary "
        "data.train_file=<file> data.eval_file=<file>"))
    splits = [TextSplit(inputs=list(data[s]["text"]), labels=None, targets=list(data[s]["summary"]))
              for s in ("train", "validation")]
    return TaskData(name="xlsum", kind="generation", train=splits[0], eval=splits[1], label_names=None)


def _xlsum_from_folder(directory: Path) -> TaskData:
    def split_of(part: str) -> TextSplit:
        columns = first_fields(directory, part, XLSUM_FIELDS)
        (text_field, summary_field), where = tuple(columns), f"{directory} (split {part!r})"
        return TextSplit(inputs=as_texts(columns[text_field], text_field, where), labels=None,
                         targets=as_texts(columns[summary_field], summary_field, where))

    if "train" in split_names(directory):
        train, evl = split_of("train"), split_of("validation")
    else:
        whole = split_of("all")
        rows = np.arange(len(whole))
        is_eval = rows % XLSUM_EVAL_EVERY == XLSUM_EVAL_EVERY - 1
        train, evl = take(whole, rows[~is_eval]), take(whole, rows[is_eval])
    return TaskData(name="xlsum", kind="generation", train=train, eval=evl, label_names=None)
