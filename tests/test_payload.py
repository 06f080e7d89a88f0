"""Sparse client updates: what is sent, the packed buffer, and the bytes."""

import numpy as np

from fedmpi.payload import densify, make_update, pack, unpack
from fedmpi.config import HeadPruningConfig
from fedmpi.models.groups import GroupFamily, GroupMap
from fedmpi.strategies import ClientContext
from fedmpi.strategies.head_pruning import HeadPruning, num_kept, top_groups

HEAD_INDEX = np.array([-1, -1, 0, 0, 1, 1, 2, 2])


def _update(client, mask, scores=None):
    delta = np.arange(8, dtype=np.float32) + client
    return make_update(
        delta, HEAD_INDEX, mask, scores, client=client, rank=0, num_samples=3, train_loss=0.5, seconds=1.0, ops=2.0, paper_bytes=0
    )


def test_update_carries_dense_part_and_kept_heads_only():
    u = _update(0, np.array([False, True, False]), np.array([0.3, 0.9, 0.2], np.float32))
    np.testing.assert_array_equal(u.values, [0, 1, 4, 5])
    np.testing.assert_array_equal(u.scores, np.array([0, 0.9, 0], np.float32))  # Eq. 7: pruned heads score 0
    np.testing.assert_array_equal(u.measured_scores, np.array([0.3, 0.9, 0.2], np.float32))  # recorded, not uploaded
    np.testing.assert_array_equal(densify(u, HEAD_INDEX), [0, 1, 0, 0, 4, 5, 0, 0])
    assert u.wire_bytes == 4 * 4 + 4 * 1 + 1


def test_pack_unpack_round_trip():
    updates = [
        _update(0, np.array([True, False, True]), np.array([0.5, 0.1, 0.7], np.float32)),
        _update(1, None, None),
        _update(2, np.array([False, False, True]), np.array([0.0, 0.0, 0.4], np.float32)),
    ]
    buffer, meta = pack(updates)
    assert buffer.dtype == np.float32
    back = unpack(buffer, meta)
    for a, b in zip(updates, back):
        assert a.client == b.client
        np.testing.assert_array_equal(a.values, b.values)
        assert (a.measured_scores is None) == (b.measured_scores is None)
        if a.measured_scores is not None:
            np.testing.assert_array_equal(a.measured_scores, b.measured_scores)
        if a.group_mask is None:
            assert b.group_mask is None
        else:
            np.testing.assert_array_equal(a.group_mask, b.group_mask)
            np.testing.assert_array_equal(a.scores, b.scores)


def test_sparser_updates_are_smaller_on_the_wire():
    dense = pack([_update(0, None)])[0]
    sparse = pack([_update(0, np.array([True, False, False]), np.ones(3, np.float32))])[0]
    assert sparse.nbytes < dense.nbytes


def test_kept_head_count_and_top_groups():
    assert num_kept(144, 0.9) == 14  # T5-small at 90% (method-spec)
    assert num_kept(72, 0.9) == 7
    assert num_kept(10, 0.99) == 1
    np.testing.assert_array_equal(top_groups(np.array([0.2, 0.9, 0.5, 0.9]), 2), [False, True, False, True])


def test_random_pruning_draws_from_rng():
    groups = GroupMap((GroupFamily("attn", "self", 20, 1),), np.arange(20, dtype=np.int32))
    s = HeadPruning(HeadPruningConfig(sparsity=0.5, pruning="random", weighting="samples"), groups)

    def mask(seed):
        ctx = ClientContext(client=0, round=1, num_samples=3, rng=np.random.default_rng(seed))
        return s.upload_mask(ctx, None, s.train_mask(ctx, lambda: None))

    a, b = mask(1), mask(1)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == 10
