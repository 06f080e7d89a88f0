"""FedProx (client.prox_mu): the proximal gradient by hand, mu = 0 is FedAvg bit for bit, mu > 0 pulls toward w_global."""

import numpy as np
import pytest
import torch

from fedmpi.client import LocalTrainer
from fedmpi.config import ClientConfig
from fedmpi.data import load_task, tokenize_split
from fedmpi.models import build_model
from fedmpi.peft_methods import Lora
from fedmpi.models.groups import GroupMap


@pytest.fixture(scope="module")
def setup():
    task = load_task("embedded", seed=0, num_train=32, num_eval=8)
    bundle = build_model("tiny-bert", kind="classification", num_labels=task.num_labels, method=Lora(rank=4), seed=0)
    train = tokenize_split(task.train, bundle.tokenizer, kind="classification", max_length=24)
    params = bundle.layout.get_flat(bundle.model).numpy().copy()
    params[bundle.layout.slice_of(next(n for n in bundle.layout.names if "lora_B" in n))] = 0.01  # B != 0
    return bundle, train, params


def trainer(setup, **client):
    bundle, train, _ = setup
    cfg = ClientConfig(batch_size=4, lr=0.01, **client)
    groups = GroupMap.empty(bundle.layout.numel)
    return LocalTrainer(bundle, train, cfg, device=torch.device("cpu"), seed=0, confidence=None, groups=groups)


def test_proximal_gradient_is_mu_times_the_distance(setup):
    bundle, _, params = setup
    t = trainer(setup, prox_mu=0.5)
    bundle.layout.set_flat(bundle.model, torch.from_numpy(params))
    anchors = [p.detach().clone() for p in t._params]
    with torch.no_grad():
        t._params[0].add_(2.0)  # w - w_global = 2 on the first parameter only
    for p in t._params:
        p.grad = None
    term = t._proximal_term(t._params, anchors)
    term.backward()
    n = t._params[0].numel()
    grads = [p.grad.clone() for p in t._params]
    for p in t._params:
        p.grad = None  # leave the shared model as a trainer expects it
    assert float(term.detach()) == pytest.approx(0.5 * 0.5 * 4.0 * n)  # mu/2 * sum 2^2
    torch.testing.assert_close(grads[0], torch.full_like(grads[0], 1.0))  # mu * 2
    assert all(float(g.abs().max()) == 0.0 for g in grads[1:])


def test_mu_zero_is_fedavg_bit_for_bit(setup):
    _, _, params = setup
    indices = np.arange(16)
    plain = trainer(setup).train(indices, params, 1, 3, record_importance=False)
    prox0 = trainer(setup, prox_mu=0.0).train(indices, params, 1, 3, record_importance=False)
    assert plain.delta.tobytes() == prox0.delta.tobytes()
    assert plain.train_loss == prox0.train_loss


def test_mu_pulls_the_delta_toward_zero(setup):
    _, _, params = setup
    indices = np.arange(16)  # four AdamW steps at batch 4
    free = trainer(setup).train(indices, params, 1, 3, record_importance=False)
    pulled = trainer(setup, prox_mu=100.0).train(indices, params, 1, 3, record_importance=False)
    assert np.linalg.norm(pulled.delta) < 0.6 * np.linalg.norm(free.delta)
