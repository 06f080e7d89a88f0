"""Every federated-LoRA rule against a dense reference: W0 + s B_c A_c per client, then the method's combination."""

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers.pytorch_utils import Conv1D

from fedmpi import lora_rules as lr

D_IN, D_OUT = 5, 7


def clients(ranks, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(r, D_IN)) for r in ranks], [rng.normal(size=(D_OUT, r)) for r in ranks]


def dense(w0, b, a, s, conv1d):
    """Client weight computed directly: W0 + s B A, transposed into Conv1D's (in, out) layout."""
    return w0 + (s * b @ a).T if conv1d else w0 + s * b @ a


def base(conv1d, seed=9):
    return np.random.default_rng(seed).normal(size=(D_IN, D_OUT) if conv1d else (D_OUT, D_IN))


WEIGHTINGS = {"weighted": np.array([10, 30, 60]), "uniform": np.array([1, 1, 1])}


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_lora_delta_matches_peft_layers(conv1d):
    torch.manual_seed(0)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = Conv1D(D_OUT, D_IN) if conv1d else torch.nn.Linear(D_IN, D_OUT)

    model = get_peft_model(Wrapper(), LoraConfig(r=3, lora_alpha=5, target_modules=["layer"], fan_in_fan_out=conv1d))
    layer = model.base_model.model.layer
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    a = layer.lora_A["default"].weight.detach().numpy()
    b = layer.lora_B["default"].weight.detach().numpy()
    expected = layer.get_delta_weight("default").detach().numpy()
    np.testing.assert_allclose(lr.lora_delta(b, a, 5 / 3, conv1d), expected, rtol=1e-5, atol=1e-6)
    assert expected.shape == layer.base_layer.weight.shape


def test_client_weights():
    np.testing.assert_array_equal(lr.client_weights([1, 3]), [0.25, 0.75])
    np.testing.assert_array_equal(lr.client_weights([1, 3], uniform=True), [0.5, 0.5])
    with pytest.raises(ValueError, match="positive"):
        lr.client_weights([0, 3])


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_flora_and_fedex_are_the_exact_average_of_client_weights(weighting, conv1d):
    p = lr.client_weights(WEIGHTINGS[weighting])
    a_list, b_list = clients([4, 4, 4])
    s, w0 = 6 / 4, base(conv1d)  # alpha = 6 != r = 4
    reference = sum(pc * dense(w0, b, a, s, conv1d) for pc, a, b in zip(p, a_list, b_list))
    np.testing.assert_allclose(w0 + lr.flora(a_list, b_list, p, s, conv1d), reference, rtol=1e-12)
    a_mean, b_mean, residual = lr.fedex_lora(a_list, b_list, p, s, conv1d)
    np.testing.assert_allclose(dense(w0 + residual, b_mean, a_mean, s, conv1d), reference, rtol=1e-12)
    assert residual.shape == w0.shape


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_fedit_is_the_product_of_means(weighting, conv1d):
    p = lr.client_weights(WEIGHTINGS[weighting])
    a_list, b_list = clients([4, 4, 4])
    s, w0 = 0.5, base(conv1d)
    a_mean, b_mean = lr.fedit(a_list, b_list, p)
    a_ref = p[0] * a_list[0] + p[1] * a_list[1] + p[2] * a_list[2]
    b_ref = p[0] * b_list[0] + p[1] * b_list[1] + p[2] * b_list[2]
    np.testing.assert_allclose(dense(w0, b_mean, a_mean, s, conv1d), dense(w0, b_ref, a_ref, s, conv1d), rtol=1e-12)
    exact = sum(pc * dense(w0, b, a, s, conv1d) for pc, a, b in zip(p, a_list, b_list))
    assert np.abs(dense(w0, b_mean, a_mean, s, conv1d) - exact).max() > 1e-3  # FedIT is inexact


def test_shared_factor_averages_are_exact():
    """FFA-LoRA (A common), RoLoRA's B round and FedSA's A: the mean of one factor with the other shared."""
    p = lr.client_weights(WEIGHTINGS["weighted"])
    a_list, b_list = clients([4, 4, 4])
    a_common = a_list[0]
    s, w0 = 2.0, base(False)
    exact = sum(pc * dense(w0, b, a_common, s, False) for pc, b in zip(p, b_list))
    _, b_mean = lr.fedit([a_common] * 3, b_list, p)
    np.testing.assert_allclose(dense(w0, b_mean, a_common, s, False), exact, rtol=1e-12)
    np.testing.assert_allclose(lr.fedsa_lora(a_list, p), sum(pc * a for pc, a in zip(p, a_list)), rtol=1e-12)
    assert [lr.rolora_factor(t) for t in (1, 2, 3, 4)] == ["B", "A", "B", "A"]


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_hetlora_pads_sums_and_truncates(weighting):
    p = lr.client_weights(WEIGHTINGS[weighting])
    ranks = [2, 4, 2]
    a_list, b_list = clients(ranks)
    a, b = lr.hetlora(a_list, b_list, p, rank=4)
    a_ref, b_ref = np.zeros((4, D_IN)), np.zeros((D_OUT, 4))
    for pc, ac, bc in zip(p, a_list, b_list):
        a_ref[: ac.shape[0]] += pc * ac
        b_ref[:, : bc.shape[1]] += pc * bc
    np.testing.assert_allclose(a, a_ref, rtol=1e-12)
    np.testing.assert_allclose(b, b_ref, rtol=1e-12)
    np.testing.assert_allclose(a[2:], p[1] * a_list[1][2:], rtol=1e-12)  # ranks only client 1 holds
    a2, b2 = lr.first_ranks(a, b, 2)
    assert a2.shape == (2, D_IN) and b2.shape == (D_OUT, 2)


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_hetlora_brings_every_client_to_the_global_scaling(weighting):
    """alpha 3, ranks 2 and 4 (r_max 4): client c's update is (alpha / r_c) B_c A_c; the global one s = alpha / 4."""
    p = lr.client_weights(WEIGHTINGS[weighting])
    ranks, alpha = [2, 4, 2], 3.0
    a_list, b_list = clients(ranks)
    scalings = np.array([alpha / r for r in ranks])
    a, b = lr.hetlora(a_list, b_list, p, 4, scalings, alpha / 4)
    a_ref, b_ref = np.zeros((4, D_IN)), np.zeros((D_OUT, 4))
    for pc, r, ac, bc in zip(p, ranks, a_list, b_list):
        a_ref[:r] += pc * ac
        b_ref[:, :r] += pc * (4 / r) * bc  # (alpha / r) B = (alpha / 4) (4 / r) B
    np.testing.assert_allclose(a, a_ref, rtol=1e-12)
    np.testing.assert_allclose(b, b_ref, rtol=1e-12)
    # With one rank for all clients HetLoRA is FedIT: the global weight is the product of the means at alpha / r.
    a_list, b_list = clients([2, 2, 2])
    a, b = lr.hetlora(a_list, b_list, p, 4, alpha / 2, alpha / 4)
    a_mean, b_mean = lr.fedit(a_list, b_list, p)
    np.testing.assert_allclose(alpha / 4 * b @ a, alpha / 2 * b_mean @ a_mean, rtol=1e-12)


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_row_weights_combine_each_row_over_its_own_clients(conv1d):
    """Head pruning's weights: rows 0-3 (one head) over clients 0 and 2, rows 4-6 over client 1 only."""
    a_list, b_list = clients([3, 3, 3])
    p = lr.client_weights([10, 30, 60])
    rows = np.zeros((3, D_OUT))
    rows[[0, 2], :4] = np.array([0.25, 0.75])[:, None]
    rows[1, 4:] = 1.0
    s, w0 = 0.5, base(conv1d)
    a_mean, b_mean, residual = lr.fedex_lora(a_list, b_list, p, s, conv1d, rows)
    np.testing.assert_allclose(a_mean, sum(pc * a for pc, a in zip(p, a_list)), rtol=1e-12)
    np.testing.assert_allclose(b_mean[:4], 0.25 * b_list[0][:4] + 0.75 * b_list[2][:4], rtol=1e-12)
    np.testing.assert_allclose(b_mean[4:], b_list[1][4:], rtol=1e-12)
    got = dense(w0 + residual, b_mean, a_mean, s, conv1d)
    want = 0.25 * dense(w0, b_list[0], a_list[0], s, conv1d) + 0.75 * dense(w0, b_list[2], a_list[2], s, conv1d)
    want_rows = dense(w0, b_list[1], a_list[1], s, conv1d)
    take = (lambda m, i: m[:, i]) if conv1d else (lambda m, i: m[i])  # output rows are Conv1D's columns
    np.testing.assert_allclose(take(got, slice(0, 4)), take(want, slice(0, 4)), rtol=1e-10)
    np.testing.assert_allclose(take(got, slice(4, None)), take(want_rows, slice(4, None)), rtol=1e-10)
    merged = lr.flora(a_list, b_list, p, s, conv1d, rows)
    np.testing.assert_allclose(take(w0 + merged, slice(0, 4)), take(want, slice(0, 4)), rtol=1e-10)


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_flexlora_is_the_truncated_svd_of_the_exact_average(weighting):
    p = lr.client_weights(WEIGHTINGS[weighting])
    ranks, alpha = [1, 2, 1], 3.0
    a_list, b_list = clients(ranks)
    scalings = np.array([alpha / r for r in ranks])
    exact = sum(pc * sc * b @ a for pc, sc, a, b in zip(p, scalings, a_list, b_list))  # rank <= 4
    s_global = alpha / 4
    a, b = lr.flexlora(a_list, b_list, p, scalings, rank=4, scaling=s_global)
    np.testing.assert_allclose(s_global * b @ a, exact, rtol=1e-10, atol=1e-12)  # r_max >= sum of ranks: exact
    u, sv, vt = np.linalg.svd(exact)
    for r in (1, 2):
        ar, br = lr.first_ranks(a, b, r)
        np.testing.assert_allclose(s_global * br @ ar, (u[:, :r] * sv[:r]) @ vt[:r], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=0), rtol=1e-10)  # even split


def test_bad_shapes_are_errors():
    a_list, b_list = clients([4, 4])
    with pytest.raises(ValueError, match="pad"):
        lr.zero_pad(a_list[0], b_list[0], 2)
    with pytest.raises(ValueError, match="weights"):
        lr.weighted_sum(a_list, np.array([1.0]))
    with pytest.raises(ValueError, match="exceeds"):
        lr.flexlora(a_list, b_list, lr.client_weights([1, 1]), 1.0, rank=9, scaling=1.0)
