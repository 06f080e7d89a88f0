"""Evaluation of the global model on the validation data, spread across ranks.

The evaluated examples (all of the validation split, or a fixed seeded subset of it:
``server.eval_samples``) are cut into fixed batches that are dealt round-robin to the
ranks, generation included; each rank returns per-example results, and rank 0 reassembles
them in example order. Batches never depend on the number of ranks, so metrics are the
same bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from rouge_score import rouge_scorer

from fedmpi import seeding
from fedmpi.data import TokenizedSplit, collate


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean per-example loss: the global loss L_g
    metric: float  # accuracy (classification) or ROUGE-L F1 (generation)


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
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per batch ``examples[start:stop]`` (default: all examples): (per-example loss,
    per-example score: 1/0 correct, or ROUGE-L F1)."""
    was_training = model.training
    model.eval()
    examples = np.arange(len(split), dtype=np.int64) if examples is None else examples
    out = []
    for start, stop in bounds:
        batch = collate(split, examples[start:stop], pad_token_id=pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**batch).logits.float()
        labels = batch["labels"]
        if split.kind == "classification":
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            score = (logits.argmax(-1) == labels).float()
        else:
            # 2-D form: the (N, C, T) one runs nll_loss2d, which has no deterministic CUDA kernel.
            token_loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none", ignore_index=-100
            ).view(labels.shape)
            valid = (labels != -100).float()
            loss = (token_loss * valid).sum(1) / valid.sum(1).clamp(min=1)
            score = _rouge_l(model, batch, tokenizer)
        out.append((loss.cpu().numpy().astype(np.float64), score.cpu().numpy().astype(np.float64)))
    model.train(was_training)
    return out


def _rouge_l(model: torch.nn.Module, batch: dict[str, torch.Tensor], tokenizer) -> torch.Tensor:
    """ROUGE-L F1 (rouge-score, the reference implementation) of greedy generations."""
    labels = batch["labels"]
    generated = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=labels.shape[1], do_sample=False
    )
    references = tokenizer.batch_decode(labels.masked_fill(labels == -100, tokenizer.pad_token_id), skip_special_tokens=True)
    candidates = tokenizer.batch_decode(generated, skip_special_tokens=True)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return torch.tensor([scorer.score(ref, cand)["rougeL"].fmeasure for ref, cand in zip(references, candidates)])


def combine(per_rank: list[list[tuple[np.ndarray, np.ndarray]]], num_batches: int) -> EvalResult:
    """Rank 0: put the ranks' batches back in order (batch b came from rank b % size)."""
    size = len(per_rank)
    ordered = [per_rank[b % size][b // size] for b in range(num_batches)]
    losses = np.concatenate([loss for loss, _ in ordered])
    scores = np.concatenate([score for _, score in ordered])
    return EvalResult(loss=float(losses.mean()), metric=float(scores.mean()))
