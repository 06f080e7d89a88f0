"""Partitioning over clients: hand-computed IID shards, Dirichlet skew, repair of empty clients, scale."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from fedmpi.data.partition import (
    Partition,
    _fill_empty_clients,
    from_assignment,
    partition_dirichlet,
    partition_iid,
)


def assert_valid(partition: Partition, num_examples: int) -> None:
    """Every example assigned exactly once, each client's indices ascending and non-empty."""
    assert np.array_equal(np.sort(partition.order), np.arange(num_examples))
    assert partition.sizes().sum() == num_examples
    assert partition.sizes().min() >= 1
    for c in range(min(partition.num_clients, 200)):
        assert np.all(np.diff(partition.client_indices(c)) > 0)


# --- IID ---------------------------------------------------------------------------------


def test_iid_small_case_by_hand() -> None:
    # The permutation numpy draws for seed 0, then cut into shards of 4, 3, 3 (10 = 3*3 + 1).
    assert np.random.default_rng(0).permutation(10).tolist() == [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]
    p = partition_iid(10, 3, np.random.default_rng(0))
    assert p.num_clients == 3
    assert p.sizes().tolist() == [4, 3, 3]
    assert p.client_indices(0).tolist() == [2, 4, 6, 7]  # sorted([4, 6, 2, 7])
    assert p.client_indices(1).tolist() == [3, 5, 9]
    assert p.client_indices(2).tolist() == [0, 1, 8]  # sorted([0, 8, 1])
    assert p.num_samples(1) == 3
    assert p.offsets.tolist() == [0, 4, 7, 10]


@pytest.mark.parametrize(("num_examples", "num_clients"), [(1, 1), (7, 7), (100, 7), (1001, 10)])
def test_iid_sizes_differ_by_at_most_one(num_examples: int, num_clients: int) -> None:
    p = partition_iid(num_examples, num_clients, np.random.default_rng(3))
    assert_valid(p, num_examples)
    assert p.sizes().max() - p.sizes().min() <= 1


def test_client_indices_are_read_only_views() -> None:
    p = partition_iid(50, 5, np.random.default_rng(0))
    view = p.client_indices(2)
    assert np.shares_memory(view, p.order)
    with pytest.raises(ValueError):
        view[0] = 0


def test_iid_is_deterministic_given_the_seed() -> None:
    a = partition_iid(1000, 13, np.random.default_rng(5))
    b = partition_iid(1000, 13, np.random.default_rng(5))
    c = partition_iid(1000, 13, np.random.default_rng(6))
    assert np.array_equal(a.order, b.order) and np.array_equal(a.offsets, b.offsets)
    assert not np.array_equal(a.order, c.order)


@pytest.mark.parametrize("bad", [0, -1, 11])
def test_iid_rejects_impossible_client_counts(bad: int) -> None:
    with pytest.raises(ValueError, match="num_clients"):
        partition_iid(10, bad, np.random.default_rng(0))


def test_from_assignment_groups_by_client() -> None:
    p = from_assignment(np.array([2, 0, 2, 1, 0]), 3)
    assert p.order.tolist() == [1, 4, 3, 0, 2]
    assert p.offsets.tolist() == [0, 2, 3, 5]


def test_partition_rejects_inconsistent_offsets() -> None:
    with pytest.raises(ValueError, match="offsets"):
        Partition(order=np.arange(4), offsets=np.array([0, 3, 2, 4]))


# --- Dirichlet ---------------------------------------------------------------------------


def label_client_counts(partition: Partition, labels: np.ndarray, num_labels: int) -> np.ndarray:
    """(num_labels, num_clients): how many examples of each label each client holds."""
    client_of = np.repeat(np.arange(partition.num_clients), partition.sizes())
    counts = np.zeros((num_labels, partition.num_clients), dtype=np.int64)
    np.add.at(counts, (labels[partition.order], client_of), 1)
    return counts


def test_dirichlet_assigns_every_example_once_and_no_client_is_empty() -> None:
    labels = np.repeat(np.arange(5), 40)
    for alpha in (0.01, 0.5, 100.0):
        p = partition_dirichlet(labels, 30, alpha, np.random.default_rng(1))
        assert p.num_clients == 30
        assert_valid(p, len(labels))


def test_dirichlet_tiny_alpha_concentrates_labels() -> None:
    labels = np.repeat(np.arange(10), 100)
    for seed in range(3):
        counts = label_client_counts(partition_dirichlet(labels, 10, 0.01, np.random.default_rng(seed)), labels, 10)
        # Most of each label sits on one client (uniform would put 10% there).
        assert np.mean(counts.max(axis=1) / 100) > 0.8


def test_dirichlet_huge_alpha_approaches_uniform() -> None:
    labels = np.repeat(np.arange(10), 1000)
    p = partition_dirichlet(labels, 10, 1e4, np.random.default_rng(0))
    counts = label_client_counts(p, labels, 10)
    shares = counts / counts.sum(axis=0, keepdims=True)  # each client's label distribution
    total_variation = 0.5 * np.abs(shares - 0.1).sum(axis=0)
    assert total_variation.max() < 0.05
    assert p.sizes().max() / p.sizes().min() < 1.2


def test_dirichlet_is_deterministic_given_the_seed() -> None:
    labels = np.random.default_rng(9).integers(0, 4, 500)
    a = partition_dirichlet(labels, 20, 0.3, np.random.default_rng(2))
    b = partition_dirichlet(labels, 20, 0.3, np.random.default_rng(2))
    c = partition_dirichlet(labels, 20, 0.3, np.random.default_rng(3))
    assert np.array_equal(a.order, b.order) and np.array_equal(a.offsets, b.offsets)
    assert not np.array_equal(a.offsets, c.offsets)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_dirichlet_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        partition_dirichlet(np.zeros(10, dtype=np.int64), 2, alpha, np.random.default_rng(0))


def test_dirichlet_rejects_more_clients_than_examples() -> None:
    with pytest.raises(ValueError, match="num_clients=11"):
        partition_dirichlet(np.zeros(10, dtype=np.int64), 11, 1.0, np.random.default_rng(0))


def test_dirichlet_with_as_many_clients_as_examples_gives_one_each() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    p = partition_dirichlet(labels, 9, 0.05, np.random.default_rng(0))
    assert p.sizes().tolist() == [1] * 9
    assert_valid(p, 9)


def test_fill_empty_clients_by_hand() -> None:
    # Client 0 received examples 7, 6, 5, 4, 3 (in that order) and client 2 got 2, 1, 0;
    # clients 1 and 3 are empty. Sizes [5, 0, 3, 0], two needed: cutting to level t = 3 frees
    # exactly 2 (both from client 0): its last-received examples 4 and 3 go to clients 1, 3.
    examples_in_order = np.array([7, 6, 5, 4, 3, 2, 1, 0])
    client_in_order = np.array([0, 0, 0, 0, 0, 2, 2, 2])
    client_of = np.empty(8, dtype=np.int64)
    client_of[examples_in_order] = client_in_order
    _fill_empty_clients(client_of, examples_in_order, client_in_order, 4)
    p = from_assignment(client_of, 4)
    assert [p.client_indices(c).tolist() for c in range(4)] == [[5, 6, 7], [4], [0, 1, 2], [3]]


def test_fill_empty_clients_when_donors_keep_one_more() -> None:
    # Sizes [4, 0, 4, 0, 0], three needed: level 2 frees 4, one too many, so the lower-id
    # donor (client 0) keeps 3 and client 2 keeps 2. The freed examples, client 0's last (3)
    # then client 2's last two (6, 7), go to the empty clients 1, 3, 4 in that order.
    examples_in_order = np.arange(8)
    client_in_order = np.array([0, 0, 0, 0, 2, 2, 2, 2])
    client_of = client_in_order.copy()
    _fill_empty_clients(client_of, examples_in_order, client_in_order, 5)
    p = from_assignment(client_of, 5)
    assert [p.client_indices(c).tolist() for c in range(5)] == [[0, 1, 2], [3], [4, 5], [6], [7]]


def test_dirichlet_scales_to_100k_clients() -> None:
    labels = np.random.default_rng(0).integers(0, 20, 400_000)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        p = partition_dirichlet(labels, 100_000, 0.1, np.random.default_rng(0))
        q = partition_iid(400_000, 100_000, np.random.default_rng(0))
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"peak {peak / 1e6:.1f} MB"
    assert seconds < 5.0, f"{seconds:.1f} s"
    assert p.num_clients == q.num_clients == 100_000
    assert p.sizes().min() >= 1 and q.sizes().min() == 4
    assert np.array_equal(np.sort(p.order), np.arange(400_000))
    assert p.order.nbytes + p.offsets.nbytes < 5e6
