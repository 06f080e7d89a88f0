"""The paper's head pruning inside the federated-LoRA strategies (``strategy.head_pruning``).

The strategies are built on tiny BERT (Linear) and tiny GPT-2 (Conv1D) as a run builds them;
each of three clients keeps four of the eight heads (head 4 by nobody), its masks come from the
strategy's own hooks, its upload from ``make_update``. The reference is numpy over dense weight
matrices: each client's W0 + s B_c A_c, and for every row of B the weighted mean over the
clients that kept the row's head (scores alpha_hc, Eq. 8, or p_c), normalised per head.
"""

import numpy as np
import pytest

from fedmpi.config import ConfigError, load_config
from fedmpi.lora_rules import client_weights
from fedmpi.models import build_model
from fedmpi.models.lora_factors import base_slices
from fedmpi.payload import densify, make_update
from fedmpi.peft_methods import Lora
from fedmpi.strategies import STRATEGIES, HeadPruning, RunInfo
from fedmpi.strategies.base import ClientContext

ALPHA, RANK = 6.0, 4
NUM_SAMPLES = np.array([3, 5, 12])
KEPT = [[0, 1, 2, 5], [1, 3, 5, 6], [2, 3, 6, 7]]  # head 4: nobody; head 5: clients 0 and 1


@pytest.fixture(scope="module", params=["tiny-bert", "tiny-gpt2"])
def bundle(request):
    return build_model(request.param, kind="classification", num_labels=3, method=Lora(rank=RANK, alpha=ALPHA), seed=0)


def build(bundle, name, *overrides):
    cfg = load_config(None, [f"strategy.name={name}", "data.num_clients=3", "server.num_clients_per_round=3", *overrides])
    run = RunInfo(seed=0, num_rounds=2, num_clients=3, batch_size=4, num_epochs=1, max_length=16, devices=cfg.devices,
                  model=bundle.model, task_head=())  # fmt: skip
    return STRATEGIES[name].for_run(cfg.strategy, bundle, run)


def scores_of(kept, rng):
    """Head scores whose top four are ``kept``."""
    scores = rng.uniform(0.0, 0.4, size=8)
    scores[kept] = rng.uniform(0.5, 1.0, size=len(kept))
    return scores.astype(np.float32)


def one_round(bundle, strategy, round_=1):
    """Params past round 1, and three clients' updates through the strategy's hooks (post_train)."""
    rng = np.random.default_rng(3)
    params = bundle.layout.get_flat(bundle.model).numpy().copy()
    for f in strategy.factors:
        params[f.b] = rng.normal(scale=0.1, size=f.d_out * f.rank)
    message = strategy.round_message(round_, np.arange(3))
    updates, full = [], []
    for c, (n, kept) in enumerate(zip(NUM_SAMPLES, KEPT)):
        ctx = ClientContext(c, round_, int(n), np.random.default_rng(c), message)
        trained = strategy.train_mask(ctx, lambda: pytest.fail("post_train scores no received model"))
        delta = rng.normal(scale=0.05, size=params.size).astype(np.float32) * strategy.groups.element_mask(trained)
        scores = scores_of(kept, rng)
        mask = strategy.upload_mask(ctx, scores, trained)
        assert np.flatnonzero(mask[:8]).tolist() == sorted(set(kept) & set(np.flatnonzero(trained[:8])))
        updates.append(make_update(delta, strategy.groups.group_index, mask, strategy.group_scores(scores), client=c,
                                   rank=0, num_samples=int(n), train_loss=0.0, seconds=0.0, ops=0.0, paper_bytes=0))  # fmt: skip
        full.append(delta)
    return params, updates, full


def head_of_rows(bundle, f):
    return bundle.groups.group_index[f.b].reshape(f.d_out, f.rank)[:, 0]


def reference_weights(updates, weighting):
    """(C, 8): alpha_hc over the clients that kept head h, normalised per head (a head nobody kept: 0)."""
    kept = np.stack([u.group_mask[:8] for u in updates]).astype(np.float64)
    if weighting == "importance":
        alpha = np.stack([u.scores[:8] for u in updates]) * kept
    else:
        alpha = kept * client_weights(NUM_SAMPLES)[:, None]
    total = alpha.sum(0)
    return np.where(total > 0, alpha / np.where(total > 0, total, 1), 0.0)


def to_rows(f, w):
    """A frozen weight in (d_out, d_in), whatever its layout."""
    return w.reshape(f.d_in, f.d_out).T if f.fan_in_fan_out else w.reshape(f.d_out, f.d_in)


def test_pruned_heads_rows_of_b_are_not_uploaded(bundle):
    strategy = build(bundle, "ffa_lora", "strategy.head_pruning.sparsity=0.5")
    params, updates, full = one_round(bundle, strategy)
    for u, delta, kept in zip(updates, full, KEPT):
        sent = densify(u, strategy.groups.group_index)
        for f in strategy.factors:
            rows_kept = np.isin(head_of_rows(bundle, f), kept)
            b_sent, b_full = sent[f.b].reshape(f.d_out, f.rank), delta[f.b].reshape(f.d_out, f.rank)
            assert not b_sent[~rows_kept].any() and b_full[~rows_kept].any()  # trained, not sent
            np.testing.assert_array_equal(b_sent[rows_kept], b_full[rows_kept])
            assert not sent[f.a].any()  # FFA-LoRA never sends A
        b_elements = sum(f.d_out * f.rank for f in strategy.factors)
        task_head = int((strategy.groups.group_index < 0).sum())
        assert u.values.size == task_head + b_elements // 2  # half the heads' rows of B, and the task head


@pytest.mark.parametrize("weighting", ["importance", "samples"])
def test_ffa_lora_combines_each_head_over_the_clients_that_kept_it(bundle, weighting):
    strategy = build(bundle, "ffa_lora", "strategy.head_pruning.sparsity=0.5", f"strategy.head_pruning.weighting={weighting}")
    params, updates, full = one_round(bundle, strategy)
    after = strategy.aggregate(params, updates, 1.0).astype(np.float64)
    w = reference_weights(updates, weighting)
    assert (w > 0).sum(0).tolist() == [1, 2, 2, 2, 0, 2, 2, 1]  # clients per head
    clients = [params.astype(np.float64) + d for d in full]
    for f in strategy.factors:
        a_g, b_g = f.split(params.astype(np.float64))
        a_new, b_new = f.split(after)
        np.testing.assert_array_equal(a_new, a_g)  # A stays at its init
        heads = head_of_rows(bundle, f)
        got = f.scaling * b_new @ a_new
        for i, h in enumerate(heads):
            if w[:, h].sum() == 0:  # nobody kept head 4: its rows keep the global B
                np.testing.assert_allclose(b_new[i], b_g[i], rtol=1e-6)
                continue
            # exact, since A is common: the weighted mean of the kept clients' s B_c[i] A
            want = sum(w[c, h] * f.scaling * f.split(clients[c])[1][i] @ a_g for c in range(3))
            np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-7)
    head = strategy.groups.group_index < 0  # the task head: FedAvg over every client
    p = client_weights(NUM_SAMPLES)
    np.testing.assert_allclose(after[head], params[head] + sum(pc * d[head] for pc, d in zip(p, full)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("weighting", ["importance", "samples"])
def test_fedex_lora_is_exact_per_head_over_the_clients_that_kept_it(bundle, weighting):
    strategy = build(bundle, "fedex_lora", "strategy.head_pruning.sparsity=0.5", f"strategy.head_pruning.weighting={weighting}")
    params, updates, full = one_round(bundle, strategy)
    frozen = strategy.frozen.astype(np.float64).copy()
    after = strategy.aggregate(params, updates, 1.0).astype(np.float64)
    frozen_after = strategy.frozen.astype(np.float64)
    w, p = reference_weights(updates, weighting), client_weights(NUM_SAMPLES)
    # What each client sent: A whole, B's kept rows (its B's other rows are the global ones).
    sent = [params.astype(np.float64) + densify(u, strategy.groups.group_index) for u in updates]
    for f, where in zip(strategy.factors, base_slices(strategy.factors)):
        w0 = to_rows(f, frozen[where])
        a_mean = sum(pc * f.split(c)[0] for pc, c in zip(p, sent))
        a_new, b_new = f.split(after)
        np.testing.assert_allclose(a_new, a_mean, rtol=1e-5, atol=1e-7)
        got = to_rows(f, frozen_after[where]) + f.scaling * b_new @ a_new  # the weight the global model computes with
        dense = [w0 + f.scaling * f.split(c)[1] @ f.split(c)[0] for c in sent]
        for i, h in enumerate(head_of_rows(bundle, f)):
            if w[:, h].sum() == 0:  # nobody kept it: no residual, its B rows stay, it moves with the new A only
                np.testing.assert_allclose(b_new[i], f.split(params)[1][i], rtol=1e-6)
                np.testing.assert_array_equal(to_rows(f, frozen_after[where])[i], w0[i].astype(np.float32))
                continue
            want = sum(w[c, h] * dense[c][i] for c in range(3))
            np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-6)


def test_flora_merges_each_head_over_the_clients_that_kept_it(bundle):
    strategy = build(bundle, "flora", "strategy.head_pruning.sparsity=0.5")
    params, updates, full = one_round(bundle, strategy)
    frozen = strategy.frozen.astype(np.float64).copy()
    after = strategy.aggregate(params, updates, 1.0)
    w = reference_weights(updates, "importance")
    sent = [params.astype(np.float64) + densify(u, strategy.groups.group_index) for u in updates]
    for f, where in zip(strategy.factors, base_slices(strategy.factors)):
        merged = to_rows(f, strategy.frozen.astype(np.float64)[where] - frozen[where])
        assert not f.split(after)[1].any()  # B restarts at 0
        for i, h in enumerate(head_of_rows(bundle, f)):
            want = sum(w[c, h] * f.scaling * f.split(s)[1][i] @ f.split(s)[0] for c, s in enumerate(sent))
            np.testing.assert_allclose(merged[i], want, rtol=1e-4, atol=1e-6)  # head 4: 0


def test_fedit_with_head_pruning_is_the_papers_method(bundle):
    """FedIT + strategy.head_pruning and the head_pruning strategy combine the same uploads alike (Eq. 8)."""
    strategy = build(bundle, "fedit", "strategy.head_pruning.sparsity=0.5")
    params, updates, _ = one_round(bundle, strategy)
    paper = HeadPruning(load_config(None, ["strategy.name=head_pruning", "strategy.sparsity=0.5"]).strategy, bundle.groups)
    paper_updates = [make_update(densify(u, strategy.groups.group_index), bundle.groups.group_index, u.group_mask[:8],
                                 u.scores[:8], client=u.client, rank=0, num_samples=u.num_samples, train_loss=0.0,
                                 seconds=0.0, ops=0.0, paper_bytes=0) for u in updates]  # fmt: skip
    np.testing.assert_allclose(strategy.aggregate(params, updates, 1.0), paper.aggregate(params, paper_updates, 1.0),
                               rtol=1e-6, atol=1e-8)  # fmt: skip


def test_the_result_files_head_columns_are_the_heads_of_the_pruned_groups(bundle, tmp_path):
    """What the writer records of ``pruned_groups`` (heads, then one A group per LoRA module) gives Fig. 5
    (``importance_readers.head_columns``) exactly the heads, and the head kinds the reader knows are the models'."""
    from fedmpi import results_schema as rs
    from fedmpi.analyze import Run
    from fedmpi.importance_readers import head_columns
    from fedmpi.models.groups import ATTENTION_KINDS

    assert rs.HEAD_FAMILY_KINDS == ATTENTION_KINDS
    groups = build(bundle, "fedit", "strategy.head_pruning.sparsity=0.5").groups
    assert groups.num_groups > bundle.groups.num_groups == 8  # the A groups come after the heads
    families = {"family_kinds": np.array([f.kind for f in groups.families]),
                "num_groups": np.array([f.num_groups for f in groups.families])}  # fmt: skip
    run = Run(tmp_path / "r.h5", {}, {}, {}, {}, families)
    np.testing.assert_array_equal(head_columns(run), np.arange(8))


def test_masks_before_training_and_rolora_rounds(bundle):
    strategy = build(bundle, "ffa_lora", "strategy.head_pruning.sparsity=0.5", "strategy.head_pruning.mask_timing=pre_train")
    assert strategy.needs_confidence and strategy.importance is None  # the received model is scored, not the training
    ctx = ClientContext(0, 1, 3, np.random.default_rng(0))
    trained = strategy.train_mask(ctx, lambda: scores_of(KEPT[0], np.random.default_rng(0)))
    assert np.flatnonzero(trained).tolist() == KEPT[0]  # the kept heads' B rows train; A never
    assert strategy.upload_mask(ctx, None, trained) is trained
    rolora = build(bundle, "rolora", "strategy.head_pruning.sparsity=0.5")
    assert rolora.importance == "confidence"
    for round_, factor in ((1, "B"), (2, "A")):
        ctx = ClientContext(0, round_, 3, np.random.default_rng(0), rolora.round_message(round_, np.arange(3)))
        trained = rolora.train_mask(ctx, lambda: None)
        assert trained[:8].all() == (factor == "B") and trained[8:].all() == (factor == "A")
        uploaded = rolora.upload_mask(ctx, scores_of(KEPT[0], np.random.default_rng(0)), trained)
        assert np.flatnonzero(uploaded[:8]).tolist() == (KEPT[0] if factor == "B" else [])  # A rounds: no head to send


def test_realised_sparsity_is_the_share_of_heads_pruned(bundle):
    """What a client-round records as its sparsity (and its analytic OPs use): the heads it did not send, of the
    heads. FFA-LoRA's frozen A and RoLoRA's untrained factor are the method, not pruning."""
    for name, round_, want in (("ffa_lora", 1, 0.5), ("rolora", 1, 0.5), ("rolora", 2, 0.0), ("fedit", 1, 0.5)):
        strategy = build(bundle, name, "strategy.head_pruning.sparsity=0.5")
        _, updates, _ = one_round(bundle, strategy, round_)
        message = strategy.round_message(round_, np.arange(3))
        got = [strategy.realised_sparsity(ClientContext(u.client, round_, u.num_samples, np.random.default_rng(0), message),
                                          u.group_mask) for u in updates]  # fmt: skip
        assert got == [want] * 3, (name, round_)
    plain = build(bundle, "ffa_lora")  # no pruning: A never sent, nothing pruned
    ctx = ClientContext(0, 1, 3, np.random.default_rng(0))
    assert plain.realised_sparsity(ctx, plain.upload_mask(ctx, None, plain.train_mask(ctx, lambda: None))) == 0.0


@pytest.mark.parametrize("name, why", [
    ("hetlora", "rank triplet"), ("flexlora", "SVD mixes the rows of every head"), ("fedsa_lora", "stays on each client"),
])  # fmt: skip
def test_pruning_where_it_does_not_apply_is_a_config_error(name, why):
    with pytest.raises(ConfigError, match=f"head_pruning does not combine with strategy.name={name}: .*{why}"):
        load_config(None, [f"strategy.name={name}", "strategy.head_pruning.sparsity=0.5"])
    with pytest.raises(ConfigError, match="pruned_heads=removed is not available with the federated-LoRA"):
        load_config(None, ["strategy.name=ffa_lora", "strategy.head_pruning.pruned_heads=removed",
                           "strategy.head_pruning.mask_timing=pre_train"])  # fmt: skip
    with pytest.raises(ConfigError, match="strategy.head_pruning.weighting=importance needs strategy.head_pruning.pruning"):
        load_config(None, ["strategy.name=fedex_lora", "strategy.head_pruning.pruning=random"])
