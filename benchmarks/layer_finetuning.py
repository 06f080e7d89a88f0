"""What the two related systems save per client-round, measured: layer finetuning and FedARA.

Part 1, layer finetuning (arXiv 2411.07826): one client's local training (``--steps``
batches of ``--batch-size`` x ``--seq-len`` random tokens, AdamW) with the last n blocks
plus the task head trainable and everything else frozen, for n = 1 and n = L (all blocks).
Frozen parameters get ``requires_grad=False`` and the embeddings are frozen, so nothing
before the first trained block requires grad: autograd records no graph there, keeps no
activations and runs no backward (the "no-grad prefix"). Each variant runs in a fresh
subprocess, so the CPU peak-RSS figures are comparable (see ``fedmpi/measure.py``). Printed
beside the measured seconds, peak memory and saved-activation bytes: the analytic memory,
FLOPs and upload of ``fedmpi.budgets``.

Part 2, FedARA (arXiv 2501.14406): SVD adapters of initial rank r0 on q, k, v; along the
cubic budget schedule, the server's top-b(t) triplet mask (scores from a few real training
steps' smoothed sensitivity), the upload it implies (kept triplets' elements + task head, fp32)
and the measured seconds and saved activations of training with modules at rank 0 switched off.

    python benchmarks/layer_finetuning.py [--model minilm] [--steps 8] [--batch-size 16] [--seq-len 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import torch

from fedmpi.budgets import TrainingShape, plan
from fedmpi.measure import ClientRoundMeter
from fedmpi.models.arch import arch_spec
from fedmpi.models.blocks import block_prefixes, model_sizes, train_last_blocks
from fedmpi.models.build import _load_backbone
from fedmpi.models.params import TrainableLayout
from fedmpi.models.svd_adapters import (
    TripletSensitivity, modules_pruned, triplet_groups, wrap_with_svd_adapters, zero_rank_modules,
)
from fedmpi.rank_allocation import default_phases, rank_budget, top_triplets

NUM_LABELS = 4


def _batches(vocab: int, steps: int, batch_size: int, seq_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield {
            "input_ids": torch.randint(1000, vocab, (batch_size, seq_len), generator=g),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
            "labels": torch.randint(0, NUM_LABELS, (batch_size,), generator=g),
        }


def _train(model, params, batches, on_backward=None) -> dict:
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batches = list(batches)
    model(**batches[0])  # warm-up forward, untimed: first-call allocations
    with ClientRoundMeter(model, torch.device("cpu")) as meter:
        for batch in batches:
            model(**batch).loss.backward()
            if on_backward is not None:
                on_backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    u = meter.usage
    return {"seconds": u.seconds, "peak_rss_bytes": u.peak_memory_bytes,
            "rss_growth_bytes": u.peak_memory_bytes - u.start_memory_bytes, "saved_activation_bytes": u.saved_activation_bytes}


def run_layer_variant(args, num_blocks: int) -> dict:
    """Child process: train the last ``num_blocks`` blocks + the head once, measured."""
    torch.set_num_threads(args.threads)
    _, model, _ = _load_backbone(args.model, kind="classification", num_labels=NUM_LABELS, seed=0)
    head = list(arch_spec(model.config.model_type).task_head)
    prefixes = block_prefixes(model)
    train_last_blocks(model, num_blocks, head)
    params = [p for p in model.parameters() if p.requires_grad]
    measured = _train(model, params, _batches(model.config.vocab_size, args.steps, args.batch_size, args.seq_len))
    train_last_blocks(model, len(prefixes), head)  # sizes of full blocks (model_sizes reads requires_grad)
    sizes = model_sizes(model, head, model.config)
    planned = plan(sizes, TrainingShape(args.batch_size, args.seq_len), num_blocks, args.steps * args.batch_size)
    return {**measured, "num_blocks": num_blocks, "of": len(prefixes), "planned_memory_bytes": planned.memory_bytes,
            "planned_flops": planned.flops, "planned_upload_bytes": planned.upload_bytes}  # fmt: skip


def run_fedara(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    _, backbone, _ = _load_backbone(args.model, kind="classification", num_labels=NUM_LABELS, seed=0)
    spec = arch_spec(backbone.config.model_type)
    model = wrap_with_svd_adapters(
        backbone, kind="classification", targets=list(spec.qkv_targets), initial_rank=args.rank,
        alpha=2.0 * args.rank, dropout=0.0, orth_reg_weight=0.5, task_head=list(spec.task_head), seed=0,
    )  # fmt: skip
    layout = TrainableLayout.from_model(model)
    groups = triplet_groups(model, layout)
    vocab = backbone.config.vocab_size
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_E." in name:
                p.normal_(0, 0.1)  # lambda starts at 0; a trained model's is not
    sensitivity = TripletSensitivity(model)
    _train(model, params, _batches(vocab, args.steps, args.batch_size, args.seq_len, seed=1), sensitivity.update)
    scores = sensitivity.scores()
    rounds = args.fedara_rounds
    warmup, final = default_phases(rounds)
    initial = groups.num_groups
    mask = np.ones(initial, bool)
    rows = []
    for t in range(1, rounds + 1):
        budget = rank_budget(t, num_rounds=rounds, initial=initial, final=int(initial * args.target_share),
                             warmup_rounds=warmup, final_rounds=final)  # fmt: skip
        mask = top_triplets(scores, budget, mask)
        upload = int(groups.element_mask(mask).sum()) * 4
        if t in (1, rounds) or t == warmup + 1 + (rounds - warmup - final) // 2:
            pruned = zero_rank_modules(groups, mask)
            with modules_pruned(model, pruned):
                active = [p for p in model.parameters() if p.requires_grad]
                measured = _train(model, active, _batches(vocab, args.steps, args.batch_size, args.seq_len, seed=t))
            rows.append({"round": t, "budget": budget, "upload_bytes": upload, "modules_off": len(pruned),
                         "modules": len(groups.families), **measured})  # fmt: skip
        else:
            rows.append({"round": t, "budget": budget, "upload_bytes": upload})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rank", type=int, default=12, help="FedARA's initial rank r0")
    parser.add_argument("--target-share", type=float, default=8 / 12, help="b_T / b_0 (mean rank 8 of 12)")
    parser.add_argument("--fedara-rounds", type=int, default=20)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_layer_variant(args, args.child)))
        return
    _, probe, _ = _load_backbone(args.model, kind="classification", num_labels=NUM_LABELS, seed=0)
    num_blocks = len(block_prefixes(probe))
    print(f"layer finetuning, {args.model}: {args.steps} steps of {args.batch_size} x {args.seq_len}, "
          f"{args.threads} threads, median of {args.repeat} fresh processes")  # fmt: skip
    header = f"{'blocks':>8} {'s':>7} {'peak RSS MiB':>13} {'RSS growth MiB':>15} {'saved act MiB':>14} {'plan mem MiB':>13} {'plan GFLOP':>11} {'upload MiB':>11}"
    print(header)
    for n in (1, num_blocks):
        runs = []
        for _ in range(args.repeat):
            cmd = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--batch-size",
                   str(args.batch_size), "--seq-len", str(args.seq_len), "--threads", str(args.threads), "--child", str(n)]  # fmt: skip
            runs.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
        med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        mib = 2.0**20
        print(f"{f'{n}/{num_blocks}':>8} {med['seconds']:7.3f} {med['peak_rss_bytes'] / mib:13.1f} {med['rss_growth_bytes'] / mib:15.1f} "
              f"{med['saved_activation_bytes'] / mib:14.2f} {med['planned_memory_bytes'] / mib:13.1f} "
              f"{med['planned_flops'] / 1e9:11.2f} {med['planned_upload_bytes'] / mib:11.3f}")  # fmt: skip
    print(f"\nFedARA, {args.model}, r0={args.rank}, {args.fedara_rounds} rounds, b_T = {args.target_share:.3f} b_0")
    print(f"{'round':>5} {'budget':>7} {'upload MiB':>11} {'modules off':>12} {'s':>7} {'saved act MiB':>14}")
    for row in run_fedara(args):
        extra = (f"{row['modules_off']:>5}/{row['modules']:<6} {row['seconds']:7.3f} {row['saved_activation_bytes'] / 2**20:14.2f}"
                 if "seconds" in row else "")  # fmt: skip
        print(f"{row['round']:>5} {row['budget']:>7} {row['upload_bytes'] / 2**20:11.4f} {extra}")


if __name__ == "__main__":
    main()
