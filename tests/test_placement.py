"""Clients to ranks by work (LPT on token counts) and step groups: pure, hand-checked."""

from __future__ import annotations

import numpy as np
import pytest

from fedmpi.data import Partition
from fedmpi.data.tokenize import Ragged, TokenizedSplit
from fedmpi.placement import assign_by_work, client_token_counts, lpt_order, step_groups


def test_lpt_order_is_by_decreasing_work_ties_by_client_id():
    work = np.array([5, 9, 5, 1, 9, 3])
    assert lpt_order(np.array([0, 1, 2, 3, 4, 5]), work) == [1, 4, 0, 2, 5, 3]
    assert lpt_order(np.array([5, 3, 2]), work) == [2, 5, 3]


def test_assign_by_work_balances_by_hand():
    # Work 10, 7, 6, 5, 4 (clients 0..4) on 2 ranks: 10 -> r0; 7 -> r1; 6 -> r1 (13); 5 -> r0 (15); 4 -> r1 (17).
    work = np.array([10, 7, 6, 5, 4])
    assert assign_by_work(np.arange(5), work, [0, 1]) == {0: [[0], [3]], 1: [[1], [2], [4]]}
    # Pure: same input, same plan; the selection's order does not matter.
    assert assign_by_work(np.array([4, 2, 0, 3, 1]), work, [0, 1]) == assign_by_work(np.arange(5), work, [0, 1])
    # Ranks that get nothing still appear; training ranks need not start at 0.
    assert assign_by_work(np.array([1]), work, [1, 2, 3]) == {1: [[1]], 2: [], 3: []}


def test_groups_are_cut_from_the_whole_selection_whatever_the_rank_count():
    work = np.array([10, 7, 6, 5, 4])
    # LPT order 0, 1, 2, 3, 4 -> groups [0, 1] (17), [2, 3] (11), [4] (4).
    assert assign_by_work(np.arange(5), work, [0], 2) == {0: [[0, 1], [2, 3], [4]]}
    assert assign_by_work(np.arange(5), work, [0, 1], 2) == {0: [[0, 1]], 1: [[2, 3], [4]]}
    assert assign_by_work(np.arange(5), work, [0, 1, 2], 2) == {0: [[0, 1]], 1: [[2, 3]], 2: [[4]]}
    assert step_groups([3, 1, 2], 2) == [[3, 1], [2]]
    with pytest.raises(ValueError, match="clients_per_step"):
        step_groups([1], 0)


def test_client_token_counts_sum_input_and_target_lengths():
    inputs = Ragged.from_sequences([[1, 2], [3], [4, 5, 6], [7]], np.dtype(np.uint16))
    targets = Ragged.from_sequences([[1], [1, 2], [1], [1, 2, 3]], np.dtype(np.uint16))
    partition = Partition(order=np.array([1, 2, 0, 3]), offsets=np.array([0, 2, 4]))
    split = TokenizedSplit(kind="classification", input_ids=inputs, labels=np.zeros(4, np.int64), target_ids=None)
    np.testing.assert_array_equal(client_token_counts(partition, split), [1 + 3, 2 + 1])
    gen = TokenizedSplit(kind="generation", input_ids=inputs, labels=None, target_ids=targets)
    np.testing.assert_array_equal(client_token_counts(partition, gen), [1 + 2 + 3 + 1, 2 + 1 + 1 + 3])
