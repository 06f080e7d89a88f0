"""Client selection: random and loss difference (Eq. 9)."""

import numpy as np
import pytest

from fedmpi.selection import select_by_loss, select_random


def test_random_selection_is_sorted_unique_and_seeded():
    a = select_random(100, 10, np.random.default_rng(3))
    b = select_random(100, 10, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0)


def test_loss_selection_takes_largest_gap():
    last = np.array([0.5, 2.0, 1.0, 3.0, 0.1])
    chosen = select_by_loss(last, global_loss=0.7, num_selected=2, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(chosen, [1, 3])


def test_unseen_clients_come_first_and_every_client_is_visited():
    num_clients, k = 10, 2
    last = np.full(num_clients, np.inf)
    seen = []
    for r in range(num_clients // k):
        chosen = select_by_loss(last, 1.0, k, np.random.default_rng(r))
        seen += chosen.tolist()
        last[chosen] = 0.5  # trained: finite loss now
    assert sorted(seen) == list(range(num_clients))


def test_ties_break_by_the_seeded_permutation():
    last = np.full(6, np.inf)
    picks = {tuple(select_by_loss(last, 0.0, 2, np.random.default_rng(s))) for s in range(20)}
    assert len(picks) > 1  # not always the lowest ids
    assert select_by_loss(last, 0.0, 2, np.random.default_rng(7)).tolist() == select_by_loss(
        last, 0.0, 2, np.random.default_rng(7)
    ).tolist()


def test_nan_global_loss_ranks_by_client_loss():
    last = np.array([1.0, 3.0, 2.0])
    assert select_by_loss(last, float("nan"), 1, np.random.default_rng(0)).tolist() == [1]


def test_bad_counts():
    with pytest.raises(ValueError, match="cannot select"):
        select_random(3, 4, np.random.default_rng(0))
