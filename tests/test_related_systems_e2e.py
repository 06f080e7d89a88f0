"""Layer finetuning and FedARA through the whole path: zero deltas outside n_c, recorded budgets,
FedARA's shrinking uploads, resume in the middle of its schedule, and 1 vs 3 ranks bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_RUN, run_here, run_launch
from test_end_to_end import _same

from fedmpi.analyze import format_run, load_run, summarize
from fedmpi.importance_readers import family_counts

# tiny-bert at batch 8 x 32 tokens (fedmpi.budgets): head only 4.05 MB, + 1 block 4.81 MB, + 2 blocks 5.56 MB.
PROFILES = (
    "devices.classes=[{name: watch, memory_bytes: 4.5e6, share: 0.25}, {name: phone, memory_bytes: 5.0e6, share: 0.5},"
    " {name: laptop, share: 0.25}]"
)
LAYERS = ["strategy.name=layer_finetuning", PROFILES]
# target_rank 0.5: b_T = 3 triplets for 6 modules, so from round 3 at least 3 modules sit at rank 0.
FEDARA = ["strategy.name=fedara", "strategy.initial_rank=4", "strategy.target_rank=0.5",
          "strategy.warmup_rounds=1", "strategy.final_rounds=1", "client.lr=0.02"]  # fmt: skip


def _launch(tmp_path, name, settings, *extra, ranks=None):
    args = [*TINY_RUN, *settings, f"output.dir={tmp_path}", f"output.name={name}", *extra]
    if ranks is None:  # one process: in this one
        return run_here(args)
    proc = run_launch(args, ranks=ranks)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp_path / f"{name}.h5"


@pytest.fixture(scope="module")
def fedara_4_rounds(tmp_path_factory):
    """FedARA over its whole 4-round schedule, run once for the module."""
    return _launch(tmp_path_factory.mktemp("fedara"), "whole", FEDARA, "server.num_rounds=4")


def test_blocks_outside_n_c_have_exactly_zero_delta():
    import torch

    from fedmpi.client import LocalTrainer
    from fedmpi.config import ClientConfig
    from fedmpi.data import load_task, tokenize_split
    from fedmpi.models.blocks import block_groups
    from fedmpi.models.build import build_model
    from fedmpi.peft_methods.blocks import FullBlocks

    task = load_task("embedded", num_train=32, num_eval=8)
    bundle = build_model("tiny-bert", kind="classification", num_labels=task.num_labels, seed=0,
                         method=FullBlocks())  # fmt: skip
    groups = block_groups(bundle.model, bundle.layout)
    train = tokenize_split(task.train, bundle.tokenizer, kind="classification", max_length=16, max_target_length=8)
    trainer = LocalTrainer(bundle, train, ClientConfig(batch_size=8, lr=0.01, weight_decay=0.1), device=torch.device("cpu"),
                           seed=0, confidence=None, groups=groups)  # fmt: skip
    params = bundle.layout.get_flat(bundle.model).numpy()
    last = trainer.train(np.arange(16), params, 1, 0, record_importance=False, trained_groups=np.array([False, True]))
    block0, block1, head = groups.group_index == 0, groups.group_index == 1, groups.group_index == -1
    assert np.all(last.delta[block0] == 0) and np.any(last.delta[block1] != 0) and np.any(last.delta[head] != 0)
    head_only = trainer.train(np.arange(16), params, 1, 0, record_importance=False, trained_groups=np.zeros(2, bool))
    assert np.all(head_only.delta[~head] == 0)
    both = trainer.train(np.arange(16), params, 1, 0, record_importance=False)
    # The frozen prefix keeps no activations: 0 < head only < last block < both blocks.
    saved = [r.usage.saved_activation_bytes for r in (head_only, last, both)]
    assert 0 < saved[0] < saved[1] < saved[2]
    assert all(p.requires_grad for p in trainer._params)  # the client's freezing is undone


def test_layer_finetuning_records_budgets_and_masks(tmp_path, capsys):
    # The backbone is chosen from a pool: MiniLM's 90 MB of weights fit no watch (mean n_c -inf), so
    # tiny-bert wins although MiniLM is listed first and is the model.name given.
    pool = ["model.name=minilm", "strategy.backbone_candidates=[minilm, tiny-bert]"]
    path = run_here([*TINY_RUN, *LAYERS, *pool, f"output.dir={tmp_path}", "output.name=layers"], progress=True)
    assert "backbone: tiny-bert (mean n_c over the device classes at 20 samples/round: minilm -inf, tiny-bert 1." in capsys.readouterr().out
    run = load_run(path)
    assert run.config["model"]["name"] == "tiny-bert" and run.config["strategy"]["backbone_candidates"] == ["minilm", "tiny-bert"]
    c = run.clients
    # watch: head only; phone: the last block; laptop: both blocks.
    expected = {0: [False, False], 1: [False, True], 2: [True, True]}
    for cls, mask in zip(c["device_class"], c["group_mask"]):
        assert mask.tolist() == expected[int(cls)]
    assert set(c["device_class"].tolist()) <= {0, 1, 2} and np.all(c["planned_memory_bytes"] <= np.where(
        c["device_class"] == 0, 4.5e6, np.where(c["device_class"] == 1, 5.0e6, np.inf)))  # fmt: skip
    assert np.all(c["peak_memory_bytes"] > 0) and np.all(c["saved_activation_bytes"] >= 0)
    by_class = {k: c["upload_bytes_paper"][c["device_class"] == k] for k in (0, 1, 2)}
    assert all(by_class[0].max() < v.min() for v in (by_class[1], by_class[2]) if v.size and by_class[0].size)
    # The profile table is in the file: 12 clients split 3 / 6 / 3, budgets as configured (NaN: unlimited).
    d = run.devices
    assert d["name"].tolist() == ["watch", "phone", "laptop"] and d["share"].tolist() == [0.25, 0.5, 0.25]
    assert d["num_clients"].tolist() == [3, 6, 3] and d["memory_bytes"][:2].tolist() == [4.5e6, 5.0e6]
    assert np.isnan(d["memory_bytes"][2]) and np.isnan(d["flops_per_round"]).all() and d["speed"].tolist() == [1.0] * 3
    seen = {k: np.unique(c["client"][c["device_class"] == k]).size for k in (0, 1, 2)}
    assert all(seen[k] <= d["num_clients"][k] for k in seen)
    assert np.all(c["skipped_modules"] == -1)  # layer finetuning switches no adapter module off
    text = format_run(summarize(run))
    assert "devices" in text and "watch" in text and "unlimited" in text and "modules skipped" not in text


def test_a_flops_budget_too_small_for_a_dirichlet_clients_data_fails_before_round_1(tmp_path):
    import re

    from fedmpi.comm import RankFailure  # the setup's error, as every rank reports it

    def build(flops: float, *partition: str) -> None:
        devices = f"devices.classes=[{{name: slow, flops_per_round: {flops}}}]"
        run_here([*TINY_RUN, "strategy.name=layer_finetuning", devices, *partition, f"output.dir={tmp_path}"])

    # A budget of 1 FLOP fails the one-batch check and says what the head alone costs for 8 samples.
    with pytest.raises(RankFailure, match="setup failed on rank 0: device class 'slow'") as one_batch:
        build(1.0)
    per_sample = float(re.search(r"flops_per_round needs (\S+) >", str(one_batch.value)).group(1)) / 8
    # 21 samples' worth fits every IID client (240 / 12 = 20) but not Dirichlet 0.1's largest client,
    # and the run says so at start, naming that client, instead of in the first round that picks it.
    with pytest.raises(RankFailure, match=r"client \d+ \((\d+) training examples") as skewed:
        build(21 * per_sample, "data.partition=dirichlet", "data.dirichlet_alpha=0.1")
    assert int(re.search(r"\((\d+) training examples", str(skewed.value)).group(1)) > 21
    assert "device class 'slow'" in str(skewed.value) and not list(tmp_path.glob("*.h5"))


def test_fedara_uploads_fall_with_the_budget(fedara_4_rounds):
    run = load_run(fedara_4_rounds)
    c = run.clients
    per_round = [c["upload_bytes_paper"][c["round"] == t].mean() for t in (1, 2, 3, 4)]
    kept = [int(c["group_mask"][c["round"] == t][0].sum()) for t in (1, 2, 3, 4)]
    # 6 modules x r0 4 = 24 triplets -> b_T = 3: b(2) = int(21 * (1 - 1/2)^3 + 3) = 5, b(3) = b(4) = 3.
    assert kept == [24, 5, 3, 3]
    assert per_round[0] > per_round[1] > per_round[2] == per_round[3]
    scores = c["importance"][c["round"] == 2]
    assert np.all(scores[:, ~c["group_mask"][c["round"] == 2][0]] == 0)  # masked triplets report nothing
    # Modules at rank 0 (from the mask) are exactly those whose adapter branch the client's forward
    # hooks never saw run: round 1 none, round 2 at least 1 (5 triplets, 6 modules), then at least 3.
    at_zero = (family_counts(run) == 0).sum(axis=1)
    np.testing.assert_array_equal(c["skipped_modules"], at_zero)
    assert np.all(at_zero[c["round"] == 1] == 0) and np.all(at_zero[c["round"] == 2] >= 1)
    assert np.all(at_zero[c["round"] >= 3] >= 3)
    assert run.devices == {}  # no device classes declared: an empty table
    assert "modules skipped / client-round" in format_run(summarize(run))


def test_fedara_resume_mid_schedule_is_bit_identical(tmp_path, monkeypatch, fedara_4_rounds):
    import fedmpi.worker as w

    original = w.Worker.train_group

    def failing(self, clients, params, on_device, round_, *rest):
        if round_ == 3:
            raise RuntimeError("injected failure on purpose")
        return original(self, clients, params, on_device, round_, *rest)

    with monkeypatch.context() as m:  # in this process: the failing run, then the resumed one
        m.setattr(w.Worker, "train_group", failing)
        with pytest.raises(RuntimeError, match="injected failure on purpose"):
            _launch(tmp_path, "parts", FEDARA, "server.num_rounds=4")
    assert load_run(tmp_path / "parts.h5").attrs["status"] == "failed"
    _launch(tmp_path, "parts", FEDARA, "server.num_rounds=4", "output.resume=true")
    _same(fedara_4_rounds, tmp_path / "parts.h5")


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("settings", [LAYERS, [*FEDARA, PROFILES]], ids=["layer_finetuning", "fedara"])
def test_one_and_three_ranks_agree_under_heterogeneous_profiles(tmp_path, settings):
    one = _launch(tmp_path, "one", settings, "server.num_rounds=3")
    three = _launch(tmp_path, "three", settings, "server.num_rounds=3", ranks=3)
    _same(one, three)
    a, b = load_run(one).clients, load_run(three).clients
    for col in ("device_class", "planned_memory_bytes", "skipped_modules", "group_mask", "importance"):
        np.testing.assert_array_equal(a[col], b[col], err_msg=col)
