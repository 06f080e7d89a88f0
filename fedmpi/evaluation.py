"""Evaluation of the global model on the validation data, spread across ranks.

The evaluated examples (all of the validation split, or a fixed seeded subset of it:
``server.eval_samples``) are cut into fixed batches that are dealt round-robin to the
ranks, generation included; each rank returns per-example results, and rank 0 reassembles
them in example order. Batches never depend on the number of ranks, so metrics are the
same bit for bit.

Classification scores accuracy. Generation generates greedily (at most the split's
``max_target_length`` new tokens) and scores ROUGE-L, ROUGE-1 and ROUGE-2 F1 with
``rouge-score``, the reference implementation; ROUGE-L is the run's metric. A causal LM
generates from its left-padded prompts and only the new tokens are scored.

A model can also be scored on one client's own label distribution (``LabelMix``,
``server.evaluation=personal``): the evaluated examples are reweighted so that each class
counts as much as it does in the client's training data, which gives the expected score on
data drawn like that client's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedmpi import seeding
from fedmpi.data import Partition, TokenizedSplit, collate
from fedmpi.data.tokenize import IGNORE_INDEX, collate_prompts
from fedmpi.results_schema import GENERATION_METRICS, METRIC_ACCURACY

# Per batch: (per-example loss, per-example scores by metric name, the run's metric first).
BatchResult = tuple[np.ndarray, dict[str, np.ndarray]]


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean per-example loss: the global loss L_g
    metric: float  # the run's metric: accuracy (classification) or ROUGE-L F1 (generation)
    metrics: dict[str, float] = field(default_factory=dict)  # every metric by name, the run's first


def eval_examples(num_examples: int, num_samples: int | None, seed: int) -> np.ndarray:
    """The evaluated example indices, ascending: all, or ``num_samples`` drawn once from the seed."""
    if num_samples is None or num_samples >= num_examples:
        return np.arange(num_examples, dtype=np.int64)
    chosen = seeding.rng(seed, seeding.EVAL_SUBSET).choice(num_examples, size=num_samples, replace=False)
    return np.sort(chosen).astype(np.int64)


def batch_bounds(num_examples: int, batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + batch_size, num_examples)) for s in range(0, num_examples, batch_size)]


@torch.no_grad()
def evaluate_batches(
    model: torch.nn.Module,
    split: TokenizedSplit,
    bounds: list[tuple[int, int]],
    *,
    pad_token_id: int,
    device: torch.device,
    tokenizer=None,
    examples: np.ndarray | None = None,
) -> list[BatchResult]:
    """Per batch ``examples[start:stop]`` (default: all examples): per-example loss, and
    per-example accuracy (1/0) or ROUGE F1 scores."""
    was_training = model.training
    model.eval()
    examples = np.arange(len(split), dtype=np.int64) if examples is None else examples
    out = []
    for start, stop in bounds:
        indices = examples[start:stop]
        batch = _to(collate(split, indices, pad_token_id=pad_token_id), device)
        logits = model(**batch).logits.float()
        labels = batch["labels"]
        if split.kind == "classification":
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            scores = {METRIC_ACCURACY: (logits.argmax(-1) == labels).double().cpu().numpy()}
        else:
            # Prompt tuning on a causal LM prepends its virtual tokens' logits: drop them.
            logits = logits[:, logits.shape[1] - labels.shape[1] :]
            if split.prompt_lengths is not None:  # a causal LM: position t predicts token t + 1
                logits, labels = logits[:, :-1], labels[:, 1:]
            loss = _mean_token_loss(logits, labels)
            scores = _rouge(_generate(model, split, indices, batch, pad_token_id, device, tokenizer),
                            _references(split, indices, tokenizer))
        out.append((loss.cpu().numpy().astype(np.float64), scores))
    model.train(was_training)
    return out


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _mean_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example: mean cross-entropy over its labelled tokens."""
    # 2-D form: the (N, C, T) one runs nll_loss2d, which has no deterministic CUDA kernel.
    token_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none", ignore_index=IGNORE_INDEX
    ).view(labels.shape)
    valid = (labels != IGNORE_INDEX).float()
    return (token_loss * valid).sum(1) / valid.sum(1).clamp(min=1)


def _generate(model, split: TokenizedSplit, indices: np.ndarray, batch, pad_token_id: int, device, tokenizer) -> list[str]:
    """Greedy generations, decoded; a causal LM's prompt is cut off, leaving only the new tokens."""
    options = dict(max_new_tokens=split.max_target_length, do_sample=False, pad_token_id=pad_token_id)
    if split.prompt_lengths is None:
        generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **options)
    else:
        prompts = _to(collate_prompts(split, indices, pad_token_id=pad_token_id), device)
        generated = model.generate(**prompts, **options)[:, prompts["input_ids"].shape[1] :]
    return tokenizer.batch_decode(generated, skip_special_tokens=True)


def _references(split: TokenizedSplit, indices: np.ndarray, tokenizer) -> list[str]:
    return tokenizer.batch_decode([split.target_ids[int(i)].tolist() for i in indices], skip_special_tokens=True)


def _rouge(candidates: list[str], references: list[str]) -> dict[str, np.ndarray]:
    # Imported here, not at the top: rouge-score loads nltk (and through it scikit-learn, scipy and
    # pandas), about 2 s of every rank's start-up, which only generation tasks need.
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(GENERATION_METRICS))
    rows = [scorer.score(ref, cand) for ref, cand in zip(references, candidates)]
    return {name: np.array([row[name].fmeasure for row in rows], dtype=np.float64) for name in GENERATION_METRICS}


def combine(per_rank: list[list[BatchResult]], num_batches: int, weights: np.ndarray | None = None) -> EvalResult:
    """Rank 0: put the ranks' batches back in order (batch b came from rank b % size) and average
    over the examples, uniformly or with per-example ``weights`` that sum to 1 (``LabelMix.weights``)."""
    size = len(per_rank)
    ordered = [per_rank[b % size][b // size] for b in range(num_batches)]
    losses = np.concatenate([loss for loss, _ in ordered])
    names = list(ordered[0][1])
    scores = {name: np.concatenate([s[name] for _, s in ordered]) for name in names}
    mean = (lambda x: float(x.mean())) if weights is None else (lambda x: float(np.dot(weights, x)))
    metrics = {name: mean(values) for name, values in scores.items()}
    return EvalResult(loss=mean(losses), metric=metrics[names[0]], metrics=metrics)


@dataclass(frozen=True)
class LabelMix:
    """Each client's training label distribution, as weights on the evaluated examples.

    ``weights(c)`` gives example i the weight p_c(y_i) / n(y_i): p_c is client c's share of
    class y among its training examples, renormalised over the classes the evaluated examples
    contain, and n(y) is how many evaluated examples have label y. A weighted mean is then
    sum_y p_c(y) x (the mean over the evaluated examples of class y): the client's expected
    loss or accuracy on data with its own label mix. Classes the client has but the evaluated
    examples lack are left out (and named in ``missing``).
    """

    mix: np.ndarray  # (num_clients, num_classes): p_c(y), each row summing to 1
    eval_labels: np.ndarray  # the evaluated examples' labels, in example order
    eval_counts: np.ndarray  # (num_classes,): n(y)
    missing: dict[int, list[int]]  # client -> its classes no evaluated example has

    @classmethod
    def build(cls, train_labels: np.ndarray, partition: Partition, eval_labels: np.ndarray) -> LabelMix:
        num_classes = int(max(train_labels.max(), eval_labels.max())) + 1
        eval_counts = np.bincount(eval_labels, minlength=num_classes)
        evaluated = eval_counts > 0
        mix = np.zeros((partition.num_clients, num_classes), dtype=np.float64)
        missing = {}
        for c in range(partition.num_clients):
            counts = np.bincount(train_labels[partition.client_indices(c)], minlength=num_classes).astype(np.float64)
            if not (counts * evaluated).any():  # (partitions leave no client empty)
                raise ValueError(
                    f"client {c}'s classes {np.flatnonzero(counts).tolist()} are not among the evaluated examples, "
                    "so its model cannot be scored on its own label mix: evaluate more examples (server.eval_samples, "
                    "data.max_eval_samples) or use server.evaluation=global"
                )
            if lacking := np.flatnonzero((counts > 0) & ~evaluated).tolist():
                missing[c] = lacking
            counts *= evaluated
            mix[c] = counts / counts.sum()
        return cls(mix=mix, eval_labels=np.asarray(eval_labels, dtype=np.int64), eval_counts=eval_counts, missing=missing)

    def weights(self, client: int) -> np.ndarray:
        return self.mix[client][self.eval_labels] / self.eval_counts[self.eval_labels]
