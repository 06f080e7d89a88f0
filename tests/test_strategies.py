"""The strategy skeleton: config sections per strategy, the registry, client hooks, and pruned groups staying put."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch

from fedmpi import config as config_module
from fedmpi.client import LocalTrainer
from fedmpi.config import ClientConfig, ConfigError, HeadPruningConfig, load_config, strategy_names
from fedmpi.data import partition_iid, tokenize_split
from fedmpi.data.embedded import make_embedded_task
from fedmpi.models import build_model
from fedmpi.peft_methods import Lora
from fedmpi.models.groups import GroupFamily, GroupMap
from fedmpi.results import ResultWriter, ServerState
from fedmpi.strategies import STRATEGIES, ClientContext, build_strategy


def test_config_union_and_registry_name_the_same_strategies():
    members = typing.get_args(typing.get_args(config_module.StrategyConfig)[0])
    assert sorted(m.model_fields["name"].default for m in members) == sorted(STRATEGIES) == list(strategy_names())


def test_each_strategy_has_its_own_keys():
    with pytest.raises(ConfigError, match="strategy.sparsity: unknown key for strategy.name=fedavg"):
        load_config(None, ["strategy.sparsity=0.5"])
    cfg = load_config(None, ["strategy.name=head_pruning", "strategy.sparsity=0.5"])
    assert isinstance(cfg.strategy, HeadPruningConfig) and cfg.strategy.sparsity == 0.5


def _groups(num: int) -> GroupMap:
    return GroupMap((GroupFamily("attn", "self", num, 1),), np.arange(num, dtype=np.int32))


def _ctx(seed: int = 0) -> ClientContext:
    return ClientContext(client=3, round=2, num_samples=5, rng=np.random.default_rng(seed))


def test_head_pruning_hooks_follow_the_mask_timing():
    scores = np.array([0.1, 0.9, 0.5, 0.3], np.float32)
    post = build_strategy(HeadPruningConfig(sparsity=0.5), _groups(4))
    assert post.importance == "confidence" and post.train_mask(_ctx(), lambda: pytest.fail("no pre-scoring")) is None
    np.testing.assert_array_equal(post.upload_mask(_ctx(), scores, None), [False, True, True, False])
    pre = build_strategy(HeadPruningConfig(sparsity=0.5, mask_timing="pre_train"), _groups(4))
    assert pre.importance is None and pre.needs_confidence
    trained = pre.train_mask(_ctx(), lambda: scores)
    np.testing.assert_array_equal(trained, [False, True, True, False])
    assert pre.upload_mask(_ctx(), scores, trained) is trained  # uploads what it trained


def test_head_pruning_needs_groups():
    with pytest.raises(ValueError, match="attention heads"):
        build_strategy(HeadPruningConfig(), GroupMap.empty(10))


def test_strategy_state_round_trips_through_the_checkpoint(tmp_path):
    writer = ResultWriter(
        tmp_path / "r.h5", run_name="r", config_yaml=load_config().to_yaml(), num_ranks=1, task_kind="classification",
        num_clients=2, group_families=[("attn", "self", 2)],
    )  # fmt: skip
    state = {"momentum": np.array([0.5, -1.0], np.float64), "round_budget": np.array(7)}
    writer.checkpoint(ServerState(3, np.ones(4, np.float32), np.array([1.0, np.inf]), np.array([1, 0], np.int32), 0.7, state))
    writer.close()
    _, back = ResultWriter.resume(tmp_path / "r.h5", config_yaml=load_config().to_yaml(), num_ranks=2)
    assert back.round == 3 and sorted(back.strategy) == ["momentum", "round_budget"]
    np.testing.assert_array_equal(back.strategy["momentum"], state["momentum"])
    assert back.strategy["round_budget"] == 7


@pytest.fixture(scope="module")
def tiny_trainer():
    task = make_embedded_task(seed=0, num_train=24, num_eval=8)
    bundle = build_model("tiny-bert", kind="classification", num_labels=task.num_labels, method=Lora(rank=4), seed=0)
    train = tokenize_split(task.train, bundle.tokenizer, kind="classification", max_length=16, max_target_length=8)
    cfg = ClientConfig(batch_size=8, lr=1e-2, weight_decay=0.1)
    trainer = LocalTrainer(bundle, train, cfg, device=torch.device("cpu"), seed=0, confidence=None, groups=bundle.groups)
    return trainer, partition_iid(len(train), 2, np.random.default_rng(0))


def test_untrained_groups_do_not_move_even_with_weight_decay(tiny_trainer):
    """Pruned means not trained: no gradient, no Adam step and no weight decay on a masked group."""
    trainer, partition = tiny_trainer
    groups = trainer.groups
    params = trainer.bundle.layout.get_flat(trainer.model).numpy().copy()
    params += np.random.default_rng(1).normal(0, 0.1, params.shape).astype(np.float32)  # LoRA B starts at 0: decay must bite
    trained = np.zeros(groups.num_groups, dtype=bool)
    trained[[0, 5]] = True
    result = trainer.train(partition.client_indices(0), params, 1, 0, record_importance=False, trained_groups=trained)
    index = groups.group_index
    frozen = (index >= 0) & ~trained[np.maximum(index, 0)]
    assert frozen.any() and (result.delta[frozen] == 0).all()
    assert np.abs(result.delta[np.isin(index, [0, 5])]).min() > 0  # kept heads train (and decay)
    assert np.abs(result.delta[index < 0]).max() > 0  # A and the task head train
    assert all(p.requires_grad for p in trainer._params)  # frozen parameters are restored afterwards


def test_training_everything_equals_an_all_true_mask(tiny_trainer):
    trainer, partition = tiny_trainer
    params = trainer.bundle.layout.get_flat(trainer.model).numpy().copy()
    idx = partition.client_indices(1)
    a = trainer.train(idx, params, 1, 1, record_importance=False, trained_groups=None)
    b = trainer.train(idx, params, 1, 1, record_importance=False, trained_groups=np.ones(trainer.groups.num_groups, bool))
    np.testing.assert_array_equal(a.delta, b.delta)
