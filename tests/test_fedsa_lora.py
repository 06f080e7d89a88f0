"""FedSA-LoRA through real runs: A averaged, B and task head per client in the store, its personal and
global evaluation, resume, rank counts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_RUN

from fedmpi.analyze import load_run
from fedmpi.comm import LocalComm
from fedmpi.config import ConfigError, load_config
from fedmpi.data.partition import from_assignment
from fedmpi.evaluation import LabelMix
from fedmpi.lora_rules import client_weights
from fedmpi.payload import densify
from fedmpi.progress import Progress
from fedmpi.server import Server
from fedmpi.simulation import run
from fedmpi.worker import Worker

FEDSA = ["strategy.name=fedsa_lora", "peft.lora.rank=4", "data.num_train=120", "data.num_clients=4",
         "server.num_clients_per_round=3", "data.partition=dirichlet", "model.name=tiny-bert"]  # fmt: skip


def go(tmp_path, name, *extra):
    cfg = load_config(None, [*TINY_RUN, *FEDSA, f"output.dir={tmp_path}", f"output.name={name}", *extra])
    return run(cfg, LocalComm(), Progress(enabled=False))


@pytest.mark.slow
def test_a_is_averaged_and_each_client_keeps_its_own_b_and_head(tmp_path, monkeypatch):
    rounds = []
    apply = Server.apply

    def spy(self, updates, round_):
        s = self.strategy
        before = {u.client: s.store.get(u.client) for u in updates}
        rounds.append(dict(params=self.params.copy(), updates=sorted(updates, key=lambda u: u.client), before=before))
        apply(self, updates, round_)
        rounds[-1].update(after=self.params.copy(), stored={u.client: s.store.get(u.client) for u in updates}, strategy=s)

    monkeypatch.setattr(Server, "apply", spy)
    go(tmp_path, "spy", "server.num_rounds=2")
    seen_before = set()
    for r in rounds:
        s, updates = r["strategy"], r["updates"]
        p = client_weights(np.array([u.num_samples for u in updates]))
        deltas = [densify(u, s.groups.group_index).astype(np.float64) for u in updates]
        shared = ~s.private
        np.testing.assert_allclose(r["after"][shared], r["params"][shared] + sum(w * d[shared] for w, d in zip(p, deltas)), rtol=1e-6, atol=1e-8)
        np.testing.assert_array_equal(r["after"][s.private], r["params"][s.private])  # the global B / head never move
        for u, d in zip(updates, deltas):
            start = r["params"][s.private] if r["before"][u.client] is None else r["before"][u.client]
            assert (r["before"][u.client] is not None) == (u.client in seen_before)
            np.testing.assert_allclose(r["stored"][u.client], start + d[s.private], rtol=1e-6, atol=1e-8)
        seen_before |= {u.client for u in updates}
    assert any(v is not None for v in rounds[1]["before"].values())  # round 2 started someone from its own B


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "disk"])
def test_resume_in_the_middle_is_bit_identical(tmp_path, store):
    extra = [f"strategy.store={store}"]
    whole_extra = [*extra, f"strategy.store_dir={tmp_path / 'whole-store'}"] if store == "disk" else extra
    parts_extra = [*extra, f"strategy.store_dir={tmp_path / 'parts-store'}"] if store == "disk" else extra
    whole = load_run(go(tmp_path, "whole", "server.num_rounds=3", *whole_extra))
    go(tmp_path, "parts", "server.num_rounds=1", *parts_extra)
    parts = load_run(go(tmp_path, "parts", "server.num_rounds=3", "output.resume=true", *parts_extra))
    assert whole.final_trainable.tobytes() == parts.final_trainable.tobytes()
    np.testing.assert_array_equal(whole.rounds["eval_loss"], parts.rounds["eval_loss"])  # per-client models too
    np.testing.assert_array_equal(whole.clients["train_loss"], parts.clients["train_loss"])


def test_disk_store_needs_a_folder():
    with pytest.raises(ConfigError, match="strategy.store=disk needs strategy.store_dir"):
        load_config(None, ["strategy.name=fedsa_lora", "strategy.store=disk"])


@pytest.mark.mpi
def test_one_and_three_ranks_agree_bit_for_bit(tmp_path):
    from conftest import run_launch
    from test_end_to_end import _same

    one = go(tmp_path, "n1", "server.num_rounds=2")
    proc = run_launch([*TINY_RUN, *FEDSA, "server.num_rounds=2", f"output.dir={tmp_path}", "output.name=n3"], ranks=3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _same(one, tmp_path / "n3.h5")


def _mixed_score(train_labels, client_examples, eval_labels, scores):
    """A client's expected score on data with its label mix, as per-class means weighted by its class shares."""
    classes, counts = np.unique(train_labels[client_examples], return_counts=True)
    present = np.isin(classes, eval_labels)
    shares = counts[present] / counts[present].sum()
    return sum(p * scores[eval_labels == k].mean() for k, p in zip(classes[present], shares))


def test_label_mix_weights_give_each_class_the_clients_share():
    train = np.array([0, 0, 0, 1, 2, 2, 1, 1, 1, 3])
    partition = from_assignment(np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1]), 2)  # client 1 has class 3, never evaluated
    eval_labels = np.array([2, 0, 1, 1, 0, 2, 2, 0])
    mix = LabelMix.build(train, partition, eval_labels)
    scores = np.random.default_rng(0).random(eval_labels.size)
    for c in (0, 1):
        w = mix.weights(c)
        assert w.sum() == pytest.approx(1.0)
        assert w @ scores == pytest.approx(_mixed_score(train, partition.client_indices(c), eval_labels, scores))
    assert mix.missing == {1: [3]}
    np.testing.assert_array_equal(mix.weights(1)[eval_labels != 1], 0)  # client 1 only has class 1 evaluated


def test_a_client_none_of_whose_classes_is_evaluated_is_an_error():
    partition = from_assignment(np.array([0, 0, 1, 1]), 2)
    with pytest.raises(ValueError, match=r"client 1's classes \[2\] are not among the evaluated examples"):
        LabelMix.build(np.array([0, 1, 2, 2]), partition, np.array([0, 1, 1]))


@pytest.mark.parametrize("evaluation", ["personal", "global"])
def test_each_personal_model_is_scored_on_its_clients_label_mix_or_on_the_eval_set(tmp_path, monkeypatch, evaluation):
    """The round's eval metric is the mean over the latest clients' models of an independent computation:
    per-class accuracy weighted by the client's training class shares (personal), or plain accuracy (global)."""
    calls = []
    evaluate = Worker.evaluate

    def spy(self, bounds, params):
        results = evaluate(self, bounds, params)
        calls.append((self, np.concatenate([scores["accuracy"] for _, scores in results])))
        return results

    monkeypatch.setattr(Worker, "evaluate", spy)
    path = go(tmp_path, evaluation, "server.num_rounds=2", f"strategy.evaluation={evaluation}")
    worker = calls[-1][0]
    clients = worker.strategy.last_clients
    last = [acc for _, acc in calls[-len(clients):]]
    train_labels = worker.trainer.train_split.labels
    eval_labels = worker.eval_split.labels[worker.eval_examples]
    if evaluation == "personal":
        expected = [_mixed_score(train_labels, worker.partition.client_indices(int(c)), eval_labels, acc)
                    for c, acc in zip(clients, last)]
    else:
        expected = [acc.mean() for acc in last]
    assert load_run(path).rounds["eval_metric"][-1] == pytest.approx(np.mean(expected), abs=1e-12)
    plain = np.mean([acc.mean() for acc in last])
    assert (np.mean(expected) != pytest.approx(plain)) == (evaluation == "personal")  # the two modes differ here
    assert len(calls) == 1 + 2 * len(clients)  # round 0 on the global model, then each round's clients' models
