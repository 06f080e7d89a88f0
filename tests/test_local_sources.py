"""Sentence pairs and offline dataset folders: SICK and XL-Sum from ../shared/data, MultiNLI from fixtures."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from fedmpi.data import load_task, tokenize_split
from fedmpi.data.sources import MULTINLI_EVAL_SPLITS, NLI_LABELS, XLSUM_EVAL_EVERY
from fedmpi.models.tiny import packaged_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} is absent (see shared/data/README.md)")
    return folder


def first_rows(path: Path, n: int) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(next(f)) for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_sick_loads_as_premise_hypothesis_pairs_and_tokenises_with_segments() -> None:
    folder = shared("sick")
    task = load_task("sick", path=str(folder), max_train_samples=40, max_eval_samples=20)
    assert task.kind == "classification" and task.label_names == NLI_LABELS
    assert len(task.train) == 40 and len(task.eval) == 20 and task.train.pairs is not None
    # The subset keeps file order; its first pair is a real row of the file, label and all.
    rows = {(r["premise"], r["hypothesis"]): r["label"] for r in first_rows(folder / "train.jsonl.gz", 4439)}
    for premise, hypothesis, label in zip(task.train.inputs, task.train.pairs, task.train.labels):
        assert rows[(premise, hypothesis)] == label

    tok = packaged_tokenizer()  # MiniLM's (= tiny-bert's) BERT tokenizer has token types
    split = tokenize_split(task.train, tok, kind="classification", max_length=64)
    assert split.token_type_ids is not None
    enc = tok(task.train.inputs[0], task.train.pairs[0], truncation=True, max_length=64)
    assert split.input_ids[0].tolist() == enc["input_ids"]
    types = split.token_type_ids[0].tolist()
    assert types == enc["token_type_ids"] and 0 in types and 1 in types  # premise 0, [SEP] hypothesis 1
    assert types.index(1) == enc["input_ids"].index(tok.sep_token_id) + 1


def test_sick_as_jsonl_with_pair_field() -> None:
    folder = shared("sick")
    task = load_task("jsonl", train_file=str(folder / "validation.jsonl.gz"), eval_file=str(folder / "validation.jsonl.gz"),
                     input_field="premise", pair_field="hypothesis")
    direct = first_rows(folder / "validation.jsonl.gz", 3)
    assert task.train.inputs[:3] == [r["premise"] for r in direct]
    assert task.train.pairs[:3] == [r["hypothesis"] for r in direct]
    assert task.train.labels[:3].tolist() == [r["label"] for r in direct]


def test_jsonl_pair_field_missing_is_named(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0}])
    with pytest.raises(ValueError, match="no field 'second'"):
        load_task("jsonl", train_file=str(tmp_path / "t.jsonl"), eval_file=str(tmp_path / "t.jsonl"), pair_field="second")


MNLI_ROWS = {
    "train": [("p0", "h0", 0), ("p1", "h1", -1), ("p2", "h2", 2)],
    "validation_matched": [("m0", "hm0", 1)],
    "validation_mismatched": [("x0", "hx0", -1), ("x1", "hx1", 0)],
}


def check_multinli(task) -> None:
    assert task.name == "multinli" and task.label_names == NLI_LABELS
    assert task.train.inputs == ["p0", "p2"] and task.train.pairs == ["h0", "h2"] and task.train.labels.tolist() == [0, 2]
    # Evaluation = validation matched + mismatched, without the pairs that have no gold label.
    assert task.eval.inputs == ["m0", "x1"] and task.eval.pairs == ["hm0", "hx1"] and task.eval.labels.tolist() == [1, 0]


def test_multinli_from_a_jsonl_folder(tmp_path: Path) -> None:
    for split, rows in MNLI_ROWS.items():
        # String labels (MultiNLI's own files say "entailment", "-") work as well as ids.
        as_rows = [{"premise": p, "hypothesis": h, "label": NLI_LABELS[y] if y >= 0 and split == "train" else y}
                   for p, h, y in rows]
        if split == "train":
            as_rows[1]["label"] = "-"
        write_jsonl(tmp_path / f"{split}.jsonl", as_rows)
    check_multinli(load_task("multinli", path=str(tmp_path)))


def test_multinli_from_a_save_to_disk_folder(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(NLI_LABELS))})
    parts = {}
    for split, rows in MNLI_ROWS.items():
        p, h, y = zip(*rows)
        parts[split] = datasets.Dataset.from_dict({"premise": list(p), "hypothesis": list(h), "label": list(y)},
                                                  features=features)
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "mnli"))
    check_multinli(load_task("multinli", path=str(tmp_path / "mnli")))


def test_multinli_folder_without_a_split_names_it(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"premise": "p", "hypothesis": "h", "label": 0}])
    with pytest.raises(ValueError, match="split 'validation_matched'.*no such split"):
        load_task("multinli", path=str(tmp_path))
    assert MULTINLI_EVAL_SPLITS[0] == "validation_matched"


def test_nli_bad_label_is_named(tmp_path: Path) -> None:
    for split in ("train", "test"):
        write_jsonl(tmp_path / f"{split}.jsonl", [{"premise": "p", "hypothesis": "h", "label": "maybe"}])
    with pytest.raises(ValueError, match="label 'maybe' of row 0"):
        load_task("sick", path=str(tmp_path))


def test_xlsum_from_the_shared_copy_is_split_deterministically() -> None:
    folder = shared("xlsum_en")
    task = load_task("xlsum", path=str(folder))
    assert task.kind == "generation" and len(task.train) + len(task.eval) == 450
    assert len(task.eval) == 450 // XLSUM_EVAL_EVERY
    rows = first_rows(folder / "all.jsonl.gz", XLSUM_EVAL_EVERY)
    assert task.eval.inputs[0] == rows[XLSUM_EVAL_EVERY - 1]["source"]
    assert task.eval.targets[0] == rows[XLSUM_EVAL_EVERY - 1]["target"]
    assert task.train.inputs[:2] == [rows[0]["source"], rows[1]["source"]]
    again = load_task("xlsum", path=str(folder))
    assert again.eval.targets == task.eval.targets


def test_xlsum_from_a_save_to_disk_folder_with_hub_fields(tmp_path: Path) -> None:
    import datasets

    parts = {s: datasets.Dataset.from_dict({"text": [f"{s} article {i}" for i in range(3)],
                                            "summary": [f"{s} summary {i}" for i in range(3)], "id": ["a", "b", "c"]})
             for s in ("train", "validation", "test")}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path))
    task = load_task("xlsum", path=str(tmp_path))
    assert task.train.inputs == [f"train article {i}" for i in range(3)]
    assert task.eval.targets == [f"validation summary {i}" for i in range(3)]
    np.testing.assert_equal(len(task.eval), 3)
