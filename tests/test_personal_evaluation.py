"""Personal evaluation (server.evaluation): the label-mix weights, and real runs of FedSA-LoRA's per-client
models and FedAvg's global model scored on the round's clients' own label mixes or on the eval set."""

from __future__ import annotations

import numpy as np
import pytest
from test_fedsa_lora import go

from fedmpi.analyze import load_run
from fedmpi.data.partition import from_assignment
from fedmpi.evaluation import LabelMix
from fedmpi.worker import Worker


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


@pytest.mark.parametrize(("strategy", "evaluation"), [("fedsa_lora", "personal"), ("fedsa_lora", "global"),
                                                    ("fedavg", "personal")])
def test_each_model_is_scored_on_its_clients_label_mix_or_on_the_eval_set(tmp_path, monkeypatch, strategy, evaluation):
    """The last round's eval metric against an independent computation from the per-example accuracies:
    per-class accuracy weighted by a client's training class shares (personal) or the plain mean (global),
    averaged over the round's clients: each with its own model (FedSA-LoRA) or all with the global one."""
    calls = []
    evaluate = Worker.evaluate

    def spy(self, bounds, params):
        results = evaluate(self, bounds, params)
        calls.append((self, np.concatenate([scores["accuracy"] for _, scores in results])))
        return results

    monkeypatch.setattr(Worker, "evaluate", spy)
    path = go(tmp_path, evaluation, "server.num_rounds=2", f"strategy.name={strategy}", f"server.evaluation={evaluation}")
    run = load_run(path)
    assert run.attrs["evaluation"] == evaluation  # the resolved mode is in the file
    worker = calls[-1][0]
    clients = run.clients["client"][run.clients["round"] == 2]
    if strategy == "fedsa_lora":  # one evaluation per client model, in the strategy's order
        clients = worker.strategy.last_clients
        accuracies = [acc for _, acc in calls[-len(clients):]]
        assert len(calls) == 1 + 2 * len(clients)  # round 0 on the global model, then each round's clients' models
    else:
        accuracies = [calls[-1][1]] * len(clients)
        assert len(calls) == 3
    train_labels = worker.trainer.train_split.labels
    eval_labels = worker.eval_split.labels[worker.eval_examples]
    if evaluation == "personal":
        expected = [_mixed_score(train_labels, worker.partition.client_indices(int(c)), eval_labels, acc)
                    for c, acc in zip(clients, accuracies)]
    else:
        expected = [acc.mean() for acc in accuracies]
    assert run.rounds["eval_metric"][-1] == pytest.approx(np.mean(expected), abs=1e-12)
    plain = np.mean([acc.mean() for acc in accuracies])
    assert (np.mean(expected) != pytest.approx(plain)) == (evaluation == "personal")  # the two modes differ here
    assert run.rounds["eval_metric"][0] == pytest.approx(calls[0][1].mean(), abs=1e-12)  # round 0: nobody's mix yet
