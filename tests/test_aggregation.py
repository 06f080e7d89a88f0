"""Eq. 5 and Eq. 8 against values computed by hand."""

import numpy as np
import pytest

from fedmpi.aggregation import fedavg, groupwise


def test_fedavg_weights_by_samples_and_server_lr():
    g = np.array([1.0, 2.0], dtype=np.float32)
    deltas = [np.array([1.0, 0.0]), np.array([4.0, 3.0])]
    # (1*[1,0] + 2*[4,3]) / 3 = [3, 2]; eta = 0.5 -> g + [1.5, 1]
    out = fedavg(g, deltas, np.array([1, 2]), server_lr=0.5)
    np.testing.assert_allclose(out, [2.5, 3.0])
    assert out.dtype == np.float32


def test_groupwise_weights_heads_by_importance_and_keeps_unkept_heads():
    # elements: 0 -> no head (A), 1,2 -> head 0, 3 -> head 1, 4 -> head 2 (nobody kept it)
    head_index = np.array([-1, 0, 0, 1, 2])
    g = np.array([10.0, 1.0, 1.0, 5.0, 7.0], dtype=np.float32)
    deltas = [np.array([1.0, 2.0, 4.0, 0.0, 0.0]), np.array([3.0, 6.0, 8.0, 2.0, 0.0])]
    samples = np.array([1, 3])
    alpha = np.array([[0.5, 0.0, 0.0], [0.25, 0.8, 0.0]])  # client 0 pruned heads 1 and 2
    out = groupwise(g, deltas, samples, alpha, head_index, server_lr=1.0, eps=1e-8)
    expected_a = 10 + (1 * 1 + 3 * 3) / 4  # Eq. 5 on the head-less element
    expected_h0 = [1 + (0.5 * 2 + 0.25 * 6) / 0.75, 1 + (0.5 * 4 + 0.25 * 8) / 0.75]
    expected_h1 = 5 + (0.8 * 2) / 0.8  # only client 1 kept head 1
    np.testing.assert_allclose(out, [expected_a, *expected_h0, expected_h1, 7.0], rtol=1e-6)


def test_groupwise_eps_guards_division():
    head_index = np.array([0])
    out = groupwise(np.zeros(1, np.float32), [np.ones(1)], np.array([1]), np.zeros((1, 1)), head_index, 1.0, 1e-8)
    assert out[0] == 0.0


def test_groupwise_with_sample_weights_equals_fedavg_when_all_kept():
    rng = np.random.default_rng(0)
    head_index = np.array([-1, 0, 0, 1, 1, -1])
    g = rng.normal(size=6).astype(np.float32)
    deltas = [rng.normal(size=6) for _ in range(3)]
    samples = np.array([2, 5, 3])
    weights = np.repeat(samples[:, None], 2, axis=1).astype(float)
    out = groupwise(g, deltas, samples, weights, head_index, 1.0, eps=1e-12)
    np.testing.assert_allclose(out, fedavg(g, deltas, samples, 1.0), rtol=1e-6)


@pytest.mark.parametrize("lr", [0.5, 2.0])
def test_server_lr_scales_the_step(lr):
    g = np.zeros(2, np.float32)
    out = fedavg(g, [np.array([1.0, -1.0])], np.array([4]), lr)
    np.testing.assert_allclose(out, [lr, -lr])
