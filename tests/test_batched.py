"""Training several clients in one step (fedmpi/batched.py) equals training them one after another."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmpi.batched import GroupTrainer, adamw_step, client_batches
from fedmpi.client import LocalTrainer
from fedmpi.config import ClientConfig
from fedmpi.data import TextSplit, tokenize_split
from fedmpi.models import HeadConfidence, build_model, use_confidence_attention
from fedmpi.models.exclusion import importance_options
from fedmpi.peft_methods import Lora

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def _texts(rng: np.random.Generator, n: int, lo: int, hi: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi)))) for _ in range(n)]


def _setup(name: str, kind: str, *, epochs: int = 1):
    rng = np.random.default_rng(0)
    n = 40
    inputs = _texts(rng, n, 3, 14)
    if kind == "classification":
        split = TextSplit(inputs=inputs, labels=rng.integers(0, 3, n).astype(np.int64), targets=None)
    else:
        split = TextSplit(inputs=inputs, labels=None, targets=_texts(rng, n, 2, 8))
    lora = Lora(rank=4, alpha=8, dropout=0.0)
    bundle = build_model(name, kind=kind, num_labels=3 if kind == "classification" else None, method=lora, seed=1,
                         attn_implementation="eager")  # fmt: skip
    use_confidence_attention(bundle.model)
    options = importance_options("eos", bundle.tokenizer, bundle.model.config, eos_token_id=bundle.eos_token_id,
                                 pad_token_id=bundle.pad_token_id)  # fmt: skip
    confidence = HeadConfidence(bundle.model, bundle.head_map, options=options, pad_token_id=bundle.pad_token_id)
    train = tokenize_split(split, bundle.tokenizer, kind=kind, max_length=24, max_target_length=12)
    cfg = ClientConfig(batch_size=4, lr=5e-3, num_epochs=epochs, weight_decay=0.01)
    trainer = LocalTrainer(bundle, train, cfg, device=torch.device("cpu"), seed=3, confidence=confidence,
                           groups=bundle.groups, dropout=False)  # fmt: skip
    # Clients of different sizes: 3, 6 and 11 examples, so 1, 2 and 3 batches per epoch.
    indices = [np.arange(0, 3), np.arange(3, 9), np.arange(9, 20)]
    return bundle, trainer, indices


def _kept(bundle, k: int, seed: int) -> np.ndarray:
    total = bundle.groups.num_groups
    kept = np.zeros(total, dtype=bool)
    kept[np.random.default_rng(seed).choice(total, size=k, replace=False)] = True
    return kept


@pytest.mark.parametrize(("name", "kind"), [("tiny-bert", "classification"), ("tiny-t5", "classification"),
                                            ("tiny-t5", "generation")])  # fmt: skip
def test_batched_equals_sequential_with_pruning_masks_and_importance(name: str, kind: str) -> None:
    bundle, trainer, indices = _setup(name, kind)
    clients = [7, 2, 5]
    global_params = bundle.layout.get_flat(bundle.model)
    kept = [_kept(bundle, 2, c) for c in clients]
    sequential = [
        trainer.train(idx, global_params, 1, c, record_importance=True, trained_groups=k)
        for c, idx, k in zip(clients, indices, kept)
    ]
    batched = GroupTrainer(trainer).train(clients, indices, global_params, 1, record_importance=True, trained_groups=kept)
    for seq, bat, k in zip(sequential, batched, kept):
        assert np.abs(seq.delta).max() > 1e-4  # they trained
        np.testing.assert_allclose(bat.delta, seq.delta, atol=2e-6, rtol=1e-4)
        assert bat.train_loss == pytest.approx(seq.train_loss, rel=1e-5)
        np.testing.assert_allclose(bat.scores, seq.scores, atol=1e-6)
    # Pruned heads' B rows stayed frozen in both modes.
    index = bundle.groups.group_index
    for bat, k in zip(batched, kept):
        frozen = (index >= 0) & ~k[np.maximum(index, 0)]
        assert frozen.any() and np.all(bat.delta[frozen] == 0)


def test_batched_two_epochs_and_a_group_of_one() -> None:
    bundle, trainer, indices = _setup("tiny-bert", "classification", epochs=2)
    global_params = bundle.layout.get_flat(bundle.model)
    group = GroupTrainer(trainer)
    for clients, idx in (([4, 9], indices[:2]), ([1], indices[2:])):
        sequential = [trainer.train(i, global_params, 2, c, record_importance=False) for c, i in zip(clients, idx)]
        batched = group.train(clients, idx, global_params, 2, record_importance=False)
        for seq, bat in zip(sequential, batched):
            np.testing.assert_allclose(bat.delta, seq.delta, atol=2e-6, rtol=1e-4)
            assert bat.train_loss == pytest.approx(seq.train_loss, rel=1e-5)
            assert bat.scores is None
            # fedmpi.measure's figures: the shared step's, seconds split by samples; no CUDA events on the CPU.
            assert bat.usage.saved_activation_bytes > 0 and bat.usage.seconds > 0 and np.isnan(bat.usage.device_seconds)


def test_adamw_step_matches_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(3, 5, generator=gen)
    ref = p.clone().requires_grad_()
    opt = torch.optim.AdamW([ref], lr=0.01, weight_decay=0.1, foreach=False)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for step in range(1, 4):
        g = torch.randn(3, 5, generator=gen)
        ref.grad = g.clone()
        opt.step()
        adamw_step(p, g, m, v, step=step, lr=0.01, weight_decay=0.1)
    torch.testing.assert_close(p, ref.detach(), rtol=0, atol=1e-7)


def test_client_batches_follow_the_sequential_draw() -> None:
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    batches = client_batches(np.arange(10, 17), 3, 2, rng_a)
    expected = []
    for epoch in range(2):
        order = rng_b.permutation(np.arange(10, 17))
        expected += [(order[s : s + 3], epoch == 1) for s in range(0, 7, 3)]
    assert len(batches) == len(expected) == 6
    for (a, la), (b, lb) in zip(batches, expected):
        np.testing.assert_array_equal(a, b)
        assert la == lb


def test_non_linear_trainable_parameter_is_a_clear_error() -> None:
    bundle, trainer, _ = _setup("tiny-bert", "classification")
    next(p for n, p in bundle.model.named_parameters() if "LayerNorm" in n).requires_grad_(True)
    from fedmpi.models import TrainableLayout

    trainer.bundle = type(bundle)(**{**bundle.__dict__, "layout": TrainableLayout.from_model(bundle.model)})
    with pytest.raises(ValueError, match="clients_per_step"):
        GroupTrainer(trainer)


def test_clients_per_step_above_one_needs_lora_dropout_off() -> None:
    from fedmpi.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="peft.lora.dropout=0"):
        load_config(overrides=["runtime.clients_per_step=2"])
    assert load_config(overrides=["runtime.clients_per_step=2", "peft.lora.dropout=0"]).runtime.clients_per_step == 2


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["strategy.name=fedara"], "strategy.name"),
        (["strategy.name=hetlora"], "strategy.name"),
        (["peft.method=ia3"], "peft.method"),
        (["client.prox_mu=0.1"], "client.prox_mu"),
        (["strategy.name=head_pruning", "strategy.mask_timing=pre_train", "strategy.pruned_heads=removed"],
         "strategy.pruned_heads=removed"),
        (["strategy.name=head_pruning", "strategy.score_on=uploaded"], "strategy.score_on=uploaded"),
    ],
)
def test_clients_per_step_above_one_refuses_what_it_cannot_honour(overrides: list[str], key: str) -> None:
    """Each error names runtime.clients_per_step and the key that conflicts with it."""
    from fedmpi.config import ConfigError, load_config

    settings = [*overrides, "peft.lora.dropout=0"]
    load_config(overrides=settings)  # fine one client at a time
    with pytest.raises(ConfigError, match="runtime.clients_per_step=2") as error:
        load_config(overrides=[*settings, "runtime.clients_per_step=2"])
    assert key in str(error.value)
