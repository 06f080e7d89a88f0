"""Server sides of layer finetuning and FedARA by hand: block-wise averaging, n_c masks, FedARA's
mask sequence and checkpointable state."""

from __future__ import annotations

import numpy as np
import pytest

from fedmpi.budgets import BudgetError, ModelSizes, TrainingShape
from fedmpi.devices import DeviceClass
from fedmpi.models.groups import GroupFamily, GroupMap
from fedmpi.strategies.fedara import RankAllocationServer, RankSchedule
from fedmpi.aggregation import groupwise_mean
from fedmpi.strategies.layer_finetuning import BlockBudgets, last_blocks_mask


def test_blockwise_average_by_hand():
    # Elements: [block0, block0, block1, head]; two clients of 1 and 3 samples.
    group_index = np.array([0, 0, 1, -1])
    glob = np.array([1.0, 1.0, 1.0, 1.0], dtype=np.float32)
    deltas = [np.array([2.0, 4.0, 0.0, 1.0]), np.array([0.0, 0.0, 8.0, 5.0])]
    masks = np.array([[True, False], [False, True]])  # client 0 trained block 0 only, client 1 block 1 only
    out = groupwise_mean(glob, deltas, np.array([1, 3]), masks, group_index, server_lr=1.0)
    # block 0: only client 0 -> +2, +4; block 1: only client 1 -> +8; head: (1*1 + 3*5)/4 = 4.
    assert out.tolist() == [3.0, 5.0, 9.0, 5.0]
    both = groupwise_mean(glob, deltas, np.array([1, 3]), np.array([[True, True], [True, True]]), group_index, 0.5)
    # block 0: (1*2 + 3*0)/4 = 0.5 -> 1 + 0.25; (1*4)/4 = 1 -> 1.5; block 1: 24/4 = 6 -> 4; head 4 -> 3.
    assert both.tolist() == [1.25, 1.5, 4.0, 3.0]
    nobody = groupwise_mean(glob, deltas, np.array([1, 3]), np.zeros((2, 2), bool), group_index, 1.0)
    assert nobody.tolist() == [1.0, 1.0, 1.0, 5.0]  # untrained blocks keep their value


def test_train_masks_follow_each_clients_device_class():
    sizes = ModelSizes(block_params=(100, 100), head_params=10, other_params=50, d_model=4, d_ff=8, num_heads=2)
    classes = (DeviceClass(name="small", memory_bytes=4000, share=0.5), DeviceClass(name="big", share=0.5))
    budgets = BlockBudgets(sizes, TrainingShape(2, 3), classes, np.array([0, 1, 1, 0]), num_epochs=1)
    assert budgets.train_mask(0, 5).tolist() == [False, True]  # memory 3800 B fits one block (tests/test_budgets.py)
    assert budgets.train_mask(1, 5).tolist() == [True, True]
    assert budgets.check_every_class(5) == {"small": 1, "big": 2}
    assert last_blocks_mask(4, 0).tolist() == [False] * 4


def test_a_data_rich_client_over_its_flops_budget_fails_at_start_naming_it():
    # Head alone: 1548 FLOPs per sample (tests/test_budgets.py), so 10 * 1548 fits 10 samples, not 11.
    sizes = ModelSizes(block_params=(100, 100), head_params=10, other_params=50, d_model=4, d_ff=8, num_heads=2)
    classes = (DeviceClass(name="slow", flops_per_round=10 * 1548, share=0.5), DeviceClass(name="big", share=0.5))
    budgets = BlockBudgets(sizes, TrainingShape(2, 3), classes, np.array([0, 1, 0, 1]), num_epochs=1)
    budgets.check_every_client(np.array([10, 50, 3, 50]))  # the big class takes any amount of data
    with pytest.raises(BudgetError, match=r"client 2 \(11 training examples, 11 samples per round\): device class "
                       r"'slow'.*flops_per_round needs 1.703e\+04 > 1.548e\+04"):
        budgets.check_every_client(np.array([10, 50, 11, 50]))
    two_epochs = BlockBudgets(sizes, TrainingShape(2, 3), classes, np.array([0, 1, 0, 1]), num_epochs=2)
    with pytest.raises(BudgetError, match=r"client 0 \(10 training examples, 20 samples per round\)"):
        two_epochs.check_every_client(np.array([10, 50, 3, 50]))


def _triplet_map(num_modules: int, rank: int, per_triplet: int = 1) -> GroupMap:
    families = tuple(GroupFamily(name=f"m{i}", kind="triplet", num_groups=rank) for i in range(num_modules))
    index = np.repeat(np.arange(num_modules * rank, dtype=np.int32), per_triplet)
    return GroupMap(families=families, group_index=np.append(index, -1).astype(np.int32))  # one head element


def test_fedara_masks_shrink_on_schedule_and_state_round_trips():
    groups = _triplet_map(num_modules=2, rank=3)  # 6 triplets
    schedule = RankSchedule(num_rounds=4, initial=6, final=2, warmup_rounds=1, final_rounds=1)
    # By hand: b(1) = 6; b(2) = int(4 * (1 - 1/2)^3 + 2) = 2 (0.5 + 2); b(3) = int(4 * 0 + 2) = 2; b(4) = 2.
    assert [schedule.budget(t) for t in (1, 2, 3, 4, 9)] == [6, 2, 2, 2, 2]
    server = RankAllocationServer(groups, schedule)
    assert server.round_message(1).all()
    params = np.ones(7, dtype=np.float32)
    deltas = [np.full(7, 1.0), np.full(7, 3.0)]
    scores = np.array([[0.1, 0.9, 0.2, 0.0, 0.5, 0.3], [0.1, 0.1, 0.0, 0.0, 0.9, 0.3]])
    new = server.aggregate(params, deltas, np.array([1, 1]), scores, round_=1, server_lr=1.0)
    # mean scores [0.1, 0.5, 0.1, 0.0, 0.7, 0.3]: keep triplets 4 and 1; the rest zeroed; the head averaged.
    assert server.round_message(2).tolist() == [False, True, False, False, True, False]
    assert new.tolist() == [0.0, 3.0, 0.0, 0.0, 3.0, 0.0, 3.0]
    saved = server.state()
    fresh = RankAllocationServer(groups, schedule)
    fresh.load_state(saved)
    assert np.array_equal(fresh.mask, server.mask) and np.array_equal(fresh.importance, server.importance)
    assert fresh.budget == 2
    # Module m0 keeps triplet 1, m1 keeps triplet 4: no module is at rank 0 yet.
    with pytest.raises(ValueError, match="starts at 8 triplets, the model has 6"):
        RankAllocationServer(groups, RankSchedule(4, 8, 2, 1, 1))
