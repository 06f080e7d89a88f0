"""The LoRA strategies' server step on real models' flat vectors (tiny BERT: Linear; tiny GPT-2: Conv1D).

Reference: each client's effective weight W0 + s B_c A_c is computed in numpy from its own
vector, combined by the method's rule, and compared with what the combined global model
holds, read back through peft (the frozen weight plus peft's own delta).
"""

import numpy as np
import pytest
import torch

from fedmpi.lora_rules import client_weights
from fedmpi.models import build_model
from fedmpi.peft_methods import Lora
from fedmpi.models.lora_factors import base_weights, client_scaling, client_view, lora_factors, set_base_weights, truncated_view
from fedmpi.strategies import lora_combine
from fedmpi.strategies.hetlora import ClientScaling

NUM_SAMPLES = np.array([3, 5, 12])
ALPHA = 6.0


@pytest.fixture(scope="module", params=["tiny-bert", "tiny-gpt2"])
def setup(request):
    bundle = build_model(request.param, kind="classification", num_labels=3, method=Lora(rank=4, alpha=ALPHA), seed=0)
    factors = lora_factors(bundle.model, bundle.layout)
    rng = np.random.default_rng(1)
    params = bundle.layout.get_flat(bundle.model).numpy().copy()
    for f in factors:
        params[f.b] = rng.normal(scale=0.1, size=f.d_out * f.rank)  # a global model past round 1
    deltas = [rng.normal(scale=0.05, size=params.size).astype(np.float32) for _ in NUM_SAMPLES]
    return bundle, factors, params, deltas


def effective(bundle, factors, params, base=None):
    """Per LoRA module: the weight the model computes with (frozen weight + peft's delta), float64."""
    model = bundle.model
    bundle.layout.set_flat(model, torch.from_numpy(params.astype(np.float32)))
    original = base_weights(model, factors)
    if base is not None:
        set_base_weights(model, factors, base.astype(np.float32))
    modules = dict(model.named_modules())
    weights = dict(model.named_parameters())
    out = [
        (weights[f.base_weight] + modules[f.module].get_delta_weight("default")).detach().double().numpy() for f in factors
    ]
    set_base_weights(model, factors, original)
    return out


def dense(f, w0, a, b):
    """W0 + s B A, computed directly (transposed for GPT-2's Conv1D)."""
    product = f.scaling * b @ a
    return w0 + (product.T if f.fan_in_fan_out else product)


def w0_of(bundle, factors):
    weights = dict(bundle.model.named_parameters())
    return [weights[f.base_weight].detach().double().numpy() for f in factors]


@pytest.mark.parametrize("uniform", [False, True], ids=["weighted", "uniform"])
def test_flora_and_fedex_reach_the_exact_average(setup, uniform):
    bundle, factors, params, deltas = setup
    p = client_weights(NUM_SAMPLES, uniform)
    w0 = w0_of(bundle, factors)
    clients = [params.astype(np.float64) + d for d in deltas]
    reference = [sum(pc * dense(f, w, *f.split(c)) for pc, c in zip(p, clients)) for f, w in zip(factors, w0)]
    base = base_weights(bundle.model, factors).astype(np.float64)
    fresh = lora_combine.lora_init_a(factors, np.random.default_rng(0))
    flora_params, flora_update = lora_combine.flora(params, factors, deltas, p, fresh)
    for got, ref in zip(effective(bundle, factors, flora_params, base + flora_update), reference):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    for f, a in zip(factors, fresh):  # adapters restart: B = 0, a fresh A
        a_new, b_new = f.split(flora_params)
        assert not b_new.any() and np.allclose(a_new, a, atol=1e-7)
    fedex_params, residual = lora_combine.fedex_lora(params, factors, deltas, p)
    for got, ref in zip(effective(bundle, factors, fedex_params, base + residual), reference):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # the task head (no LoRA factor) follows FedAvg in both
    head = bundle.layout.element_task_head_mask()
    expected_head = params[head] + sum(pc * d[head] for pc, d in zip(p, deltas))
    np.testing.assert_allclose(fedex_params[head], expected_head, rtol=1e-6)
    np.testing.assert_allclose(flora_params[head], expected_head, rtol=1e-6)


def test_hetlora_and_flexlora_with_two_client_ranks(setup):
    """alpha 6, r_max 4 (s = 1.5): a client of rank r trains at alpha / r (3 at rank 2), as peft would train it."""
    bundle, factors, params, deltas = setup
    p = client_weights(NUM_SAMPLES)
    ranks = np.array([2, 4, 2])
    # a client of rank r trains only its first r ranks: its deltas elsewhere are 0
    deltas = [truncated_view(d, factors, int(r)) for d, r in zip(deltas, ranks)]
    starts = [client_view(params, factors, int(r)) for r in ranks]
    for f in factors:  # where a client starts: the global model's first r ranks, at its own scaling
        a_g, b_g = f.split(params.astype(np.float64))
        for start, r in zip(starts, ranks):
            a0, b0 = f.split(start.astype(np.float64))
            assert not a0[r:].any() and not b0[:, r:].any()
            np.testing.assert_allclose(ALPHA / r * b0 @ a0, f.scaling * b_g[:, :r] @ a_g[:r], rtol=1e-5, atol=1e-7)
    clients = [st.astype(np.float64) + d for st, d in zip(starts, deltas)]
    het = lora_combine.hetlora(params, factors, deltas, p, ranks)
    flex = lora_combine.flexlora(params, factors, deltas, p, ranks)
    for f in factors:
        updates = [(ALPHA / r, *f.split(c)) for c, r in zip(clients, ranks)]  # (s_c, A_c, B_c)
        # HetLoRA: each client's factors at the global scaling (B times s_c / s), zero-padded, p-weighted.
        a_ref, b_ref = np.zeros((f.rank, f.d_in)), np.zeros((f.d_out, f.rank))
        for pc, (s_c, a, b), r in zip(p, updates, ranks):
            a_ref[:r] += pc * a[:r]
            b_ref[:, :r] += pc * (s_c / f.scaling) * b[:, :r]
        a_het, b_het = f.split(het)
        np.testing.assert_allclose(a_het, a_ref, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b_het, b_ref, rtol=1e-5, atol=1e-7)
        # FlexLoRA: the global rank-4 factors (read at s) are the best rank-4 fit of sum p_c s_c B_c A_c.
        exact = sum(pc * s_c * b @ a for pc, (s_c, a, b) in zip(p, updates))
        u, sv, vt = np.linalg.svd(exact)
        a_flex, b_flex = f.split(flex.astype(np.float64))
        np.testing.assert_allclose(f.scaling * b_flex @ a_flex, (u[:, :4] * sv[:4]) @ vt[:4], rtol=1e-4, atol=1e-6)
        a2, b2 = f.split(client_view(flex, factors, 2).astype(np.float64))  # what a rank-2 client receives
        np.testing.assert_allclose(ALPHA / 2 * b2 @ a2, (u[:, :2] * sv[:2]) @ vt[:2], rtol=1e-4, atol=1e-6)


def test_client_scaling_is_alpha_over_the_client_rank_while_it_trains(setup):
    bundle, factors, params, _ = setup
    modules = dict(bundle.model.named_modules())
    layers = [modules[f.module] for f in factors]
    bundle.layout.set_flat(bundle.model, torch.from_numpy(params))
    with ClientScaling(layers, [client_scaling(f, 2) for f in factors]):
        for f, layer in zip(factors, layers):
            a, b = f.split(params.astype(np.float64))
            delta = layer.get_delta_weight("default").detach().double().numpy()
            np.testing.assert_allclose(delta.T if f.fan_in_fan_out else delta, ALPHA / 2 * b @ a, rtol=1e-5, atol=1e-7)
    assert [layer.scaling["default"] for layer in layers] == [ALPHA / 4] * len(layers)  # restored
