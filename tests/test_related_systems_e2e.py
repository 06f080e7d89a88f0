"""Layer finetuning and FedARA through the whole path: zero deltas outside n_c, recorded budgets,
FedARA's shrinking uploads, resume in the middle of its schedule, and 1 vs 3 ranks bit for bit."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import TINY_RUN, run_here, run_launch
from test_end_to_end import _same

from fedmpi.analyze import load_run

# tiny-bert at batch 8 x 32 tokens (fedmpi.budgets): head only 4.05 MB, + 1 block 4.81 MB, + 2 blocks 5.56 MB.
PROFILES = (
    "devices.classes=[{name: watch, memory_bytes: 4.5e6, share: 0.25}, {name: phone, memory_bytes: 5.0e6, share: 0.5},"
    " {name: laptop, share: 0.25}]"
)
LAYERS = ["strategy.name=layer_finetuning", PROFILES]
FEDARA = ["strategy.name=fedara", "strategy.initial_rank=4", "strategy.target_rank=1",
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


def test_layer_finetuning_records_budgets_and_masks(tmp_path):
    run = load_run(_launch(tmp_path, "layers", LAYERS))
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


def test_fedara_uploads_fall_with_the_budget(fedara_4_rounds):
    run = load_run(fedara_4_rounds)
    c = run.clients
    per_round = [c["upload_bytes_paper"][c["round"] == t].mean() for t in (1, 2, 3, 4)]
    kept = [int(c["group_mask"][c["round"] == t][0].sum()) for t in (1, 2, 3, 4)]
    # 6 modules x r0 4 = 24 triplets -> b_T = 6: b(2) = int(18 * (1 - 1/2)^3 + 6) = 8, b(3) = b(4) = 6.
    assert kept == [24, 8, 6, 6]
    assert per_round[0] > per_round[1] > per_round[2] == per_round[3]
    scores = c["importance"][c["round"] == 2]
    assert np.all(scores[:, ~c["group_mask"][c["round"] == 2][0]] == 0)  # masked triplets report nothing


FAULT_IN_ROUND_3 = """
import fedmpi.worker as w
original = w.Worker.train_group
def failing(self, clients, params, on_device, round_, *rest):
    if round_ == 3:
        raise RuntimeError("injected failure on purpose")
    return original(self, clients, params, on_device, round_, *rest)
w.Worker.train_group = failing
"""


def test_fedara_resume_mid_schedule_is_bit_identical(tmp_path, monkeypatch, fedara_4_rounds):
    (tmp_path / "sitecustomize.py").write_text(FAULT_IN_ROUND_3)
    with monkeypatch.context() as m:
        m.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        failed = run_launch([*TINY_RUN, *FEDARA, "server.num_rounds=4", f"output.dir={tmp_path}", "output.name=parts"])
    assert failed.returncode != 0 and load_run(tmp_path / "parts.h5").attrs["status"] == "failed"
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
    for col in ("device_class", "planned_memory_bytes", "group_mask", "importance"):
        np.testing.assert_array_equal(a[col], b[col], err_msg=col)
