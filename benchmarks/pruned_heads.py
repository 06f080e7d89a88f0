"""Seconds per client-round with pruned heads removed from the forward and backward, vs the analytic OPs.

One client (MiniLM + LoRA r=16 on q/k/v, the embedded task, ``--samples`` samples, batch 16)
trains one local epoch with ``strategy.pruned_heads=removed`` at each sparsity and sequence
length (every sample padded to exactly T tokens, so T is what is measured). The same seeded
random head mask is used at a given sparsity (``num_kept``, as fedmpi keeps them).
It prints the measured speed-up over 0% sparsity beside the paper's analytic OPs ratio
(``fedmpi.accounting.ops_per_sequence`` at the same T; 3.9x at 90% and T = 512) and, for
reference, the frozen variant (pruned heads computed, not trained: no speed-up expected).

    python benchmarks/pruned_heads.py [--sparsity 0 0.5 0.9] [--seq-len 64 256] [--samples 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from fedmpi import accounting, seeding
from fedmpi.client import LocalTrainer
from fedmpi.config import ClientConfig
from fedmpi.data import load_task, tokenize_split
from fedmpi.peft_methods import Lora
from fedmpi.models import build_model, use_confidence_attention
from fedmpi.strategies.head_pruning import num_kept


def random_mask(num_heads: int, sparsity: float, seed: int) -> np.ndarray:
    mask = np.zeros(num_heads, dtype=bool)
    mask[np.random.default_rng(seed).choice(num_heads, num_kept(num_heads, sparsity), replace=False)] = True
    return mask


def build_trainer(model_name: str, seq_len: int, samples: int, batch_size: int) -> LocalTrainer:
    task = load_task("embedded", seed=0, num_train=max(samples, 16), num_eval=8)
    bundle = build_model(model_name, kind=task.kind, num_labels=task.num_labels, method=Lora(rank=16),
                         seed=seeding.torch_seed(0, seeding.INIT))
    use_confidence_attention(bundle.model)  # SDPA underneath
    # Every sample is long enough to be cut at exactly seq_len tokens, so T is what is measured.
    texts = task.train.inputs
    long = [" ".join(texts[(i + j) % len(texts)] for j in range(seq_len // 4)) for i in range(len(texts))]
    split = dataclasses.replace(task.train, inputs=long)
    train = tokenize_split(split, bundle.tokenizer, kind=task.kind, max_length=seq_len)
    return LocalTrainer(bundle, train, ClientConfig(batch_size=batch_size, lr=5e-4), device=torch.device("cpu"),
                        seed=0, confidence=None, groups=bundle.groups)


def client_seconds(trainer: LocalTrainer, params: np.ndarray, mask: np.ndarray | None, removed: bool,
                   samples: int, repeat: int) -> float:
    indices = np.arange(samples)
    times = []
    for r in range(repeat + 1):  # the first is a warm-up
        start = time.perf_counter()
        trainer.train(indices, params, 1, r, record_importance=False, trained_groups=mask, remove_untrained=removed)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    parser.add_argument("--seq-len", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {args.model}, 1 client x {args.samples} samples, batch {args.batch_size}, {torch.get_num_threads()} "
          f"threads, median of {args.repeat}")
    header = f"{'T':>5} {'sparsity':>8} {'kept':>5} {'removed s':>10} {'frozen s':>9} {'speed-up':>9} {'OPs ratio':>10}"
    print(header)
    for seq_len in args.seq_len:
        trainer = build_trainer(args.model, seq_len, args.samples, args.batch_size)
        bundle = trainer.bundle
        params = bundle.layout.get_flat(bundle.model).numpy().copy()
        dims = accounting.attention_dims(bundle.model.get_base_model().config)
        num_heads = bundle.head_map.num_heads_total
        dense_s = dense_ops = None
        for sparsity in args.sparsity:
            mask = random_mask(num_heads, sparsity, seed=0)
            removed = client_seconds(trainer, params, mask, True, args.samples, args.repeat)
            frozen = client_seconds(trainer, params, mask, False, args.samples, args.repeat)
            ops = accounting.ops_per_sequence(dims, rank=16, sparsity=sparsity, seq_len=seq_len)
            if dense_s is None:
                dense_s, dense_ops = removed, ops
            print(f"{seq_len:>5} {100 * sparsity:>7g}% {int(mask.sum()):>5} {removed:>10.3f} {frozen:>9.3f} "
                  f"{dense_s / removed:>8.2f}x {dense_ops / ops:>9.2f}x")
    paper = accounting.ops_per_sequence(dims, rank=16, sparsity=0.0) / accounting.ops_per_sequence(
        dims, rank=16, sparsity=0.9)
    print(f"# analytic OPs ratio of this model at 90%, T=512 (the paper quotes 3.9x for its settings): {paper:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
