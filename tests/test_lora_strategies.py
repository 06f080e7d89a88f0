"""Every federated-LoRA strategy through a real round of fedmpi, against a dense reference.

A spy on the server records the global vector and the clients' updates of round 1. The
reference rebuilds each client's factors (the vector it started from plus its delta), forms
its weight update s B_c A_c directly in numpy, combines them by the method's rule, and
compares with what the global model holds after the round: s B A from the new global
factors, plus the change of the frozen weights for FLoRA and FedEx-LoRA (in the frozen
weight's own layout: GPT-2's Conv1D is (in, out)). LoRA alpha 6 at rank 4 (s = 1.5; a rank-2 client's 3).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_RUN

from fedmpi import accounting
from fedmpi.analyze import load_run
from fedmpi.comm import LocalComm
from fedmpi.config import load_config
from fedmpi.lora_rules import client_weights
from fedmpi.models import hf_model
from fedmpi.models.lora_factors import base_slices
from fedmpi.payload import densify
from fedmpi.progress import Progress
from fedmpi.server import Server
from fedmpi.simulation import run
from fedmpi.strategies.base import ClientContext

ROUND = ["server.num_rounds=1", "peft.lora.rank=4", "peft.lora.alpha=6", "data.num_train=120", "server.num_clients_per_round=3",
         "data.partition=dirichlet"]  # unequal client sizes: weighted and uniform means differ
RANKS = ["strategy.ranks=[2,4]", "strategy.shares=[0.5,0.5]"]


def one_round(tmp_path, monkeypatch, model, *overrides):
    seen = {}
    apply = Server.apply

    def spy(self, updates, round_):
        frozen = getattr(self.strategy, "frozen", None)
        seen.update(params=self.params.copy(), updates=sorted(updates, key=lambda u: u.client), strategy=self.strategy,
                    frozen=None if frozen is None else frozen.copy())  # fmt: skip
        apply(self, updates, round_)
        seen.update(after=self.params.copy(), frozen_after=None if frozen is None else self.strategy.frozen.copy())

    monkeypatch.setattr(Server, "apply", spy)
    cfg = load_config(None, [*TINY_RUN, *ROUND, f"model.name={model}", f"output.dir={tmp_path}", "output.name=r", *overrides])
    run(cfg, LocalComm(), Progress(enabled=False))
    return seen


def client_vectors(seen):
    """Each client's trained vector: what it started from (the strategy's client view) plus its delta."""
    s = seen["strategy"]
    out = []
    for u in seen["updates"]:
        ctx = ClientContext(u.client, 1, u.num_samples, np.random.default_rng(0), s.round_message(1, np.array([u.client for u in seen["updates"]])))
        out.append(s.client_params(ctx, seen["params"]).astype(np.float64) + densify(u, s.groups.group_index))
    return out


def product(f, a, b):
    """s B A in (d_out, d_in)."""
    return f.scaling * b @ a


def weights(seen, uniform=False):
    return client_weights(np.array([u.num_samples for u in seen["updates"]]), uniform)


def global_products(seen):
    s = seen["strategy"]
    return [product(f, *f.split(seen["after"].astype(np.float64))) for f in s.factors]


def frozen_change(seen, f, where):
    """The frozen weight's change, brought to (d_out, d_in)."""
    change = (seen["frozen_after"].astype(np.float64) - seen["frozen"])[where]
    return change.reshape(f.d_in, f.d_out).T if f.fan_in_fan_out else change.reshape(f.d_out, f.d_in)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-bert", "tiny-gpt2"])
@pytest.mark.parametrize("name", ["flora", "fedex_lora"])
def test_frozen_weight_strategies_hold_the_exact_mean(tmp_path, monkeypatch, model, name):
    seen = one_round(tmp_path, monkeypatch, model, f"strategy.name={name}")
    s, p, clients = seen["strategy"], weights(seen), client_vectors(seen)
    for f, where, now in zip(s.factors, base_slices(s.factors), global_products(seen)):
        exact = sum(pc * product(f, *f.split(c)) for pc, c in zip(p, clients))
        np.testing.assert_allclose(frozen_change(seen, f, where) + now, exact, rtol=2e-4, atol=1e-6)
        if name == "flora":
            assert not f.split(seen["after"])[1].any()  # B restarts at 0


@pytest.mark.slow
@pytest.mark.parametrize("uniform", [False, True], ids=["samples", "uniform"])
def test_fedit_is_the_product_of_the_means(tmp_path, monkeypatch, uniform):
    extra = ["strategy.weighting=uniform"] if uniform else []
    seen = one_round(tmp_path, monkeypatch, "tiny-bert", "strategy.name=fedit", *extra)
    s, p, clients = seen["strategy"], weights(seen, uniform), client_vectors(seen)
    assert len(set(u.num_samples for u in seen["updates"])) > 1  # weighted and uniform differ
    for f, now in zip(s.factors, global_products(seen)):
        a = sum(pc * f.split(c)[0] for pc, c in zip(p, clients))
        b = sum(pc * f.split(c)[1] for pc, c in zip(p, clients))
        np.testing.assert_allclose(now, product(f, a, b), rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ffa_lora", "rolora"])
def test_one_shared_factor_makes_the_mean_exact(tmp_path, monkeypatch, name):
    seen = one_round(tmp_path, monkeypatch, "tiny-bert", f"strategy.name={name}")
    s, p, clients = seen["strategy"], weights(seen), client_vectors(seen)
    for f, now in zip(s.factors, global_products(seen)):
        np.testing.assert_array_equal(f.split(seen["after"])[0], f.split(seen["params"])[0])  # A did not move
        exact = sum(pc * product(f, *f.split(c)) for pc, c in zip(p, clients))
        np.testing.assert_allclose(now, exact, rtol=1e-4, atol=1e-7)
    for u in seen["updates"]:  # only B was uploaded
        assert u.group_mask.tolist() == [False, True] * len(s.factors)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-bert", "tiny-gpt2"])
def test_hetlora_and_flexlora_with_two_client_ranks(tmp_path, monkeypatch, model):
    """Client c trains at s_c = alpha / r_c (6 / 2 = 3 at rank 2), the global model is read at s = 6 / 4."""
    for name in ("hetlora", "flexlora"):
        seen = one_round(tmp_path / name, monkeypatch, model, f"strategy.name={name}", *RANKS, "seed=1")
        s, p, clients = seen["strategy"], weights(seen), client_vectors(seen)
        ranks = s.client_rank[[u.client for u in seen["updates"]]]
        assert sorted(set(ranks.tolist())) == [2, 4]
        for u, r in zip(seen["updates"], ranks):  # the hooks the client trained under set peft's scaling to alpha / r_c
            hooks = s.local_hooks(ClientContext(u.client, 1, u.num_samples, np.random.default_rng(0)), None)
            assert hooks.scalings == [6 / r] * len(s.factors)
        for f, now in zip(s.factors, global_products(seen)):
            if name == "hetlora":
                a_ref, b_ref = np.zeros((f.rank, f.d_in)), np.zeros((f.d_out, f.rank))
                for pc, c, r in zip(p, clients, ranks):
                    a, b = f.split(c)
                    a_ref[:r] += pc * a[:r]
                    b_ref[:, :r] += pc * (6 / r) / f.scaling * b[:, :r]  # at the global scaling
                    assert not a[r:].any() and not b[:, r:].any()  # a rank-2 client holds no more
                np.testing.assert_allclose(now, product(f, a_ref, b_ref), rtol=1e-4, atol=1e-7)
            else:
                exact = sum(pc * (6 / r) * np.matmul(*f.split(c)[::-1]) for pc, c, r in zip(p, clients, ranks))
                u, sv, vt = np.linalg.svd(exact)
                np.testing.assert_allclose(now, (u[:, :4] * sv[:4]) @ vt[:4], rtol=1e-3, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ffa_lora", "fedex_lora"])
def test_head_pruning_inside_a_lora_strategy(tmp_path, monkeypatch, name):
    """strategy.head_pruning on a real round: each client sends only its top half of the heads' B rows, scored
    while training (Eq. 6), and each head's rows combine over the clients that kept it, weighted by those scores."""
    seen = one_round(tmp_path, monkeypatch, "tiny-bert", f"strategy.name={name}", "strategy.head_pruning.sparsity=0.5")
    s, p = seen["strategy"], weights(seen)
    num_heads = s.pruning.num_heads
    kept = np.stack([u.group_mask[:num_heads] for u in seen["updates"]])
    assert (kept.sum(1) == num_heads // 2).all()
    alpha = np.stack([u.scores[:num_heads] for u in seen["updates"]]).astype(np.float64) * kept
    assert (alpha[kept] > 0).all()
    w = np.divide(alpha, alpha.sum(0), out=np.zeros_like(alpha), where=alpha.sum(0) > 0)
    sent = [seen["params"].astype(np.float64) + densify(u, s.groups.group_index) for u in seen["updates"]]
    for m, (f, now) in enumerate(zip(s.factors, global_products(seen))):
        heads = s.groups.group_index[f.b].reshape(f.d_out, f.rank)[:, 0]
        if name == "fedex_lora":
            now = now + frozen_change(seen, f, base_slices(s.factors)[m])
        else:
            for x in sent:  # FFA-LoRA sends no A
                np.testing.assert_array_equal(f.split(x)[0], f.split(seen["params"].astype(np.float64))[0])
        for i, h in enumerate(heads):
            if not kept[:, h].any():
                continue
            want = sum(w[c, h] * f.scaling * f.split(x)[1][i] @ f.split(x)[0] for c, x in enumerate(sent))
            np.testing.assert_allclose(now[i], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["ffa_lora", "rolora"])
def test_recorded_sparsity_and_ops_count_the_pruned_heads(tmp_path, monkeypatch, name):
    """At head_pruning.sparsity=0.9 a client keeps 1 of tiny BERT's 8 heads: it records 7/8 and its OPs are the
    paper's at 7/8, though it sends no A either (FFA-LoRA never, RoLoRA in B rounds); RoLoRA's A rounds prune nothing."""
    seen = one_round(tmp_path, monkeypatch, "tiny-bert", f"strategy.name={name}", "strategy.head_pruning.sparsity=0.9",
                     "server.num_rounds=2")  # fmt: skip
    clients, rounds = load_run(tmp_path / "r.h5").clients, load_run(tmp_path / "r.h5").rounds
    want = {1: 7 / 8, 2: 7 / 8 if name == "ffa_lora" else 0.0}
    np.testing.assert_array_equal(clients["sparsity"], [want[r] for r in clients["round"]])
    np.testing.assert_array_equal(rounds["sparsity"][1:], [want[1], want[2]])
    dims = accounting.attention_dims(hf_model(seen["strategy"].run.model).config)
    ops = [accounting.ops_per_sequence(dims, rank=4, sparsity=want[r]) * n
           for r, n in zip(clients["round"], clients["num_samples"])]  # fmt: skip
    np.testing.assert_allclose(clients["ops"], ops, rtol=1e-12)


@pytest.mark.parametrize("name", ["hetlora", "flexlora"])
def test_ops_use_each_clients_own_rank(tmp_path, monkeypatch, name):
    """A rank-r_c client's analytic OPs are the paper's at r_c (not peft.lora.rank); nothing is head-pruned."""
    seen = one_round(tmp_path, monkeypatch, "tiny-bert", f"strategy.name={name}", *RANKS)
    clients = load_run(tmp_path / "r.h5").clients
    strategy = seen["strategy"]
    ranks = strategy.client_rank[clients["client"]]
    assert set(ranks) == {2, 4}  # both classes took part, so the test tells the two rules apart
    np.testing.assert_array_equal(clients["sparsity"], 0.0)
    dims = accounting.attention_dims(hf_model(strategy.run.model).config)
    ops = [accounting.ops_per_sequence(dims, rank=int(r), sparsity=0.0) * n for r, n in zip(ranks, clients["num_samples"])]
    np.testing.assert_allclose(clients["ops"], ops, rtol=1e-12)


def test_fedprox_at_mu_zero_is_fedavg_bit_for_bit(tmp_path):
    common = [*TINY_RUN, *ROUND, "model.name=tiny-bert", f"output.dir={tmp_path}"]
    paths = [run(load_config(None, [*common, f"output.name={n}", *extra]), LocalComm(), Progress(enabled=False))
             for n, extra in (("plain", []), ("prox0", ["client.prox_mu=0.0"]), ("prox", ["client.prox_mu=1.0"]))]  # fmt: skip
    plain, prox0, prox = (load_run(p).final_trainable for p in paths)
    assert plain.tobytes() == prox0.tobytes()
    assert plain.tobytes() != prox.tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flora", "hetlora"])
def test_resume_restores_frozen_weights_and_client_ranks(tmp_path, name):
    common = [*TINY_RUN, *ROUND, "model.name=tiny-bert", f"output.dir={tmp_path}", f"strategy.name={name}"]
    if name == "hetlora":
        common += RANKS

    def go(out, *extra):
        return run(load_config(None, [*common, f"output.name={out}", *extra]), LocalComm(), Progress(enabled=False))

    whole = go("whole", "server.num_rounds=3")
    go("parts", "server.num_rounds=1")
    parts = go("parts", "server.num_rounds=3", "output.resume=true")
    a, b = load_run(whole), load_run(parts)
    assert a.final_trainable.tobytes() == b.final_trainable.tobytes()
    np.testing.assert_array_equal(a.rounds["eval_loss"], b.rounds["eval_loss"])  # every rank's model saw the same weights
    np.testing.assert_array_equal(a.rounds["download_bytes_paper"], b.rounds["download_bytes_paper"])


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["hetlora", "flora"])
def test_one_and_three_ranks_agree_bit_for_bit(tmp_path, name):
    """HetLoRA's per-client ranks and FLoRA's frozen weights do not depend on the rank count.

    Evaluation is spread over the ranks, so equal eval losses also show that every rank's
    model holds the frozen weights rank 0 computed.
    """
    from conftest import run_here, run_launch
    from test_end_to_end import _same

    args = [*TINY_RUN, *ROUND, "server.num_rounds=2", "model.name=tiny-bert", f"strategy.name={name}", f"output.dir={tmp_path}"]
    if name == "hetlora":
        args += RANKS
    one = run_here([*args, "output.name=n1"])
    proc = run_launch([*args, "output.name=n3"], ranks=3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _same(one, tmp_path / "n3.h5")
    three = load_run(tmp_path / "n3.h5")
    assert three.rounds["download_bytes_mpi"][1] > 0
    # Rank 0 sends ranks 1 and 2 one copy each of what every client's row counts (FLoRA: the frozen weights too).
    for r in (1, 2):
        np.testing.assert_array_equal(2 * three.clients["download_bytes_mpi"][three.clients["round"] == r],
                                      three.rounds["download_bytes_mpi"][r])
