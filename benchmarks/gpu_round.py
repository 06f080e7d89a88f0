"""The paper's round on one GPU: one client at a time vs G clients per step vs k ranks per GPU.

Workload (the paper's setting, on synthetic tokens): T5-small's architecture built from its
config in code (no download; random weights), LoRA r=16 on q, k, v, sequence classification
with 3 labels, 20 clients of 393 samples each (1000 clients over 393k MultiNLI pairs, 20 per
round), batch 80, 512 tokens, one local epoch, AdamW lr 5e-4. Two methods: FedAvg, and the
paper's (head pruning at 90% by importance, Eq. 6 recorded in the training forward, Eq. 8
weighting). One timed round covers the whole training phase of the round: LPT placement,
local training, packing, gather to rank 0, aggregation, broadcast of the new global vector
(no evaluation; Eq. 9's global loss is one evaluation, timed elsewhere). Dropout is off in
every variant (peft.lora.dropout=0, eval-mode forward), so every variant does the same work.

Variants, each after an untimed warm-up (one batch per client of the rank's first group):
  - G = 1, 2, 4 clients per step (``runtime.clients_per_step``) on 1 rank;
  - 1, 2, 4 ranks per GPU (``mpiexec -n k``), G = 1 (``--full-grid``: every G at every k).
Printed per variant: seconds per round, client-trainings per second, the speed-up over one
client at a time on one rank, peak device memory (per rank and summed over the ranks), and
the largest change of the global vector in the round, and its largest difference from the
G=1, 1-rank one (a check that batching and placement do not change the result beyond float
tolerance).

    python benchmarks/gpu_round.py                 # on a GPU: the paper's round, about 3-4 min on one H200
    python benchmarks/gpu_round.py --quick         # CPU, tiny T5, seconds: what the test runs

Exits non-zero on any error. An out-of-memory variant is reported as OOM and counted as an error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedmpi import runtime, seeding  # noqa: E402
from fedmpi.client import LocalTrainer  # noqa: E402
from fedmpi.comm import RankFailure, collective, create_comm  # noqa: E402
from fedmpi.config import ClientConfig, FedAvgConfig, HeadPruningConfig, RuntimeConfig, ServerConfig  # noqa: E402
from fedmpi.data import Partition  # noqa: E402
from fedmpi.data.tokenize import Ragged, TokenizedSplit  # noqa: E402
from fedmpi.models import HeadConfidence, ModelBundle, TrainableLayout, use_confidence_attention  # noqa: E402
from fedmpi.models.arch import arch_spec  # noqa: E402
from fedmpi.models.build import set_attention  # noqa: E402
from fedmpi.models.importance import ImportanceOptions  # noqa: E402
from fedmpi.peft_methods import Lora  # noqa: E402
from fedmpi.payload import pack, unpack  # noqa: E402
from fedmpi.placement import assign_by_work, client_token_counts  # noqa: E402
from fedmpi.server import Server  # noqa: E402
from fedmpi.strategies import STRATEGIES, build_strategy  # noqa: E402
from fedmpi.worker import Worker  # noqa: E402

# t5-small's config.json, spelled out: no download.
T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="relu",
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)  # fmt: skip
T5_TINY = {**T5_SMALL, "vocab_size": 1000, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
           "num_heads": 4, "relative_attention_num_buckets": 8}  # fmt: skip
PAPER = dict(model=T5_SMALL, num_clients=20, samples=393, batch=80, tokens=512, lr=5e-4)
QUICK = dict(model=T5_TINY, num_clients=4, samples=10, batch=4, tokens=24, lr=5e-3)
METHODS = {
    "fedavg": FedAvgConfig(name="fedavg"),
    "ours": HeadPruningConfig(name="head_pruning", sparsity=0.9, pruning="importance", weighting="importance"),
}
NUM_LABELS = 3
SEED = 0


# ---------------------------------------------------------------- one rank's side (--worker)


def synthetic_split(num: int, tokens: int, vocab: int, seed: int) -> TokenizedSplit:
    """``num`` sequences of exactly ``tokens`` random ids ending in EOS (id 1), with random labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, size=(num, tokens), dtype=np.int64)
    ids[:, -1] = 1
    ragged = Ragged(values=ids.reshape(-1).astype(np.uint16), offsets=np.arange(num + 1, dtype=np.int64) * tokens)
    return TokenizedSplit(kind="classification", input_ids=ragged, labels=rng.integers(0, NUM_LABELS, num).astype(np.int64),
                          target_ids=None)  # fmt: skip


def build_bundle(model_dims: dict, method: str, device: torch.device) -> ModelBundle:
    from transformers import T5Config, T5ForSequenceClassification

    torch.manual_seed(seeding.torch_seed(SEED, seeding.INIT))
    backbone = T5ForSequenceClassification(T5Config(**model_dims, num_labels=NUM_LABELS))
    set_attention(backbone, "sdpa")
    lora = Lora(rank=16, dropout=0.0)
    task_head = list(arch_spec("t5").task_head)
    model = lora.wrap(backbone, kind="classification", task_head=task_head, seed=SEED)
    model.float().train()
    layout = TrainableLayout.from_model(model, task_head=task_head)
    bundle = ModelBundle(model=model, tokenizer=None, kind="classification", layout=layout,
                         groups=lora.head_groups(model, layout), pad_token_id=0, eos_token_id=1)  # fmt: skip
    if METHODS[method].name == "head_pruning":
        use_confidence_attention(model)
    model.to(device)
    return bundle


def run_variant(comm, device, args, scale: dict, method: str, clients_per_step: int) -> dict:
    """One warm-up and one timed round of ``method`` at ``clients_per_step``; rank 0 returns the figures."""
    bundle = build_bundle(scale["model"], method, device)
    strategy = build_strategy(METHODS[method], STRATEGIES[METHODS[method].name].group_map(bundle))
    confidence = None
    if strategy.needs_confidence:
        options = ImportanceOptions(excluded_ids=frozenset({1}), decoder_excluded_ids=frozenset({1}))  # EOS (id 1)
        confidence = HeadConfidence(bundle.model, bundle.head_map, options=options, pad_token_id=0)
    num, samples = scale["num_clients"], scale["samples"]
    train = synthetic_split(num * samples, scale["tokens"], scale["model"]["vocab_size"], SEED)
    partition = Partition(order=np.arange(num * samples, dtype=np.int64), offsets=np.arange(num + 1, dtype=np.int64) * samples)
    cfg = ClientConfig(batch_size=scale["batch"], lr=scale["lr"])
    trainer = LocalTrainer(bundle, train, cfg, device=device, seed=SEED, confidence=confidence, groups=strategy.groups,
                           precision=args.precision, dropout=False)  # fmt: skip
    worker = Worker(trainer, strategy, partition, train, rank=comm.rank, seed=SEED,
                    ops_per_sample=lambda sparsity, rank=None: math.nan, num_epochs=1, clients_per_step=clients_per_step)
    params = bundle.layout.get_flat(bundle.model).cpu().numpy()
    initial = params.copy()
    server = Server(ServerConfig(num_clients_per_round=num), strategy, num, params, SEED)
    ranks = list(range(comm.size))
    selected = np.arange(num)
    plan = assign_by_work(selected, client_token_counts(partition, train), ranks, clients_per_step)
    mine = plan[comm.rank]

    # Warm-up (CUDA context, kernels, allocator): the rank's first group, one batch per client.
    warm_sizes = np.minimum(partition.sizes(), scale["batch"])
    worker.partition = Partition(order=np.concatenate([partition.client_indices(c)[:n] for c, n in enumerate(warm_sizes)]),
                                 offsets=np.concatenate([[0], np.cumsum(warm_sizes)]))  # fmt: skip
    collective(comm, "warm-up", lambda: worker.train_clients(mine[:1], params, 0))
    worker.partition = partition
    _sync(device)
    comm.allgather(None)  # every rank starts the round together
    start = time.perf_counter()
    updates = collective(comm, "training", lambda: worker.train_clients(mine, params, 1))
    buffer, meta = pack(updates)
    buffers, metas = comm.gather_arrays(buffer), comm.gather(meta)
    if comm.rank == 0:
        server.apply([u for b, m in zip(buffers, metas) for u in unpack(b, m)], 1)
        params[:] = server.params
    comm.bcast_array(params)
    _sync(device)
    comm.allgather(None)
    seconds = time.perf_counter() - start
    cuda = device.type == "cuda"  # on the CPU the peak is the process's RSS, not device memory
    peaks = comm.gather(max((u.peak_memory_bytes for u in updates), default=math.nan) if cuda else math.nan)
    device_seconds = comm.gather(sum(u.device_seconds for u in updates))
    if comm.rank != 0:
        return {}
    return {
        "method": method, "ranks": comm.size, "clients_per_step": clients_per_step, "seconds": seconds,
        "clients_per_second": num / seconds, "peak_memory_max": float(np.nanmax(peaks)) if np.isfinite(peaks).any() else math.nan,
        "peak_memory_sum": float(np.nansum(peaks)) if np.isfinite(peaks).any() else math.nan,
        "device_seconds": float(sum(device_seconds)), "update": float(np.abs(params - initial).max()),
        "params_file": _save(params, args, method, comm.size, clients_per_step),
    }  # fmt: skip


def _save(params: np.ndarray, args, method: str, ranks: int, g: int) -> str:
    path = Path(args.out_dir) / f"params-{method}-k{ranks}-g{g}.npy"
    np.save(path, params)
    return str(path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker_main(args) -> int:
    comm = create_comm("auto")
    scale = QUICK if args.quick else PAPER
    device, _ = runtime.configure(RuntimeConfig(device="cpu" if args.quick else args.device, num_threads=1 if args.quick else None), comm)
    lines = []
    for method in args.methods:
        for g in args.groups:
            try:
                row = run_variant(comm, device, args, scale, method, g)
            except RankFailure as exc:
                oom = "OutOfMemoryError" in str(exc) or "out of memory" in str(exc)
                row = {"method": method, "ranks": comm.size, "clients_per_step": g, "error": "OOM" if oom else str(exc)}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if comm.rank == 0:
                lines.append(row)
                print(json.dumps(row), flush=True)
    if comm.rank == 0:
        Path(args.json).write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return 0


# ---------------------------------------------------------------- the driver


def _mpiexec() -> str | None:
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


def _launch(ranks: int, groups: list[int], args, out_dir: Path) -> tuple[int, list[dict]]:
    json_path = out_dir / f"k{ranks}.jsonl"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--json", str(json_path), "--out-dir", str(out_dir),
           "--precision", args.precision, "--device", args.device, "--methods", *args.methods,
           "--groups", *map(str, groups)]  # fmt: skip
    if args.quick:
        cmd.append("--quick")
    if ranks > 1:
        launcher = _mpiexec()
        if launcher is None:
            print(f"[gpu_round] no mpiexec: cannot run {ranks} ranks", flush=True)
            return 1, []
        cmd = [launcher, "-n", str(ranks), *cmd]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}
    print(f"[gpu_round] {ranks} rank(s), G in {groups}", flush=True)
    proc = subprocess.run(cmd, env=env, cwd=REPO, text=True, capture_output=True, timeout=args.timeout)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", flush=True)
    rows = [json.loads(line) for line in json_path.read_text().splitlines()] if json_path.exists() else []
    return proc.returncode, rows


def _mib(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x / 2**20:,.0f}"


def report(rows: list[dict]) -> int:
    """Print the table; return the number of failed variants."""
    failures = 0
    base = {r["method"]: r for r in rows if r.get("ranks") == 1 and r.get("clients_per_step") == 1 and "error" not in r}
    ref = {m: np.load(r["params_file"]) for m, r in base.items()}
    print(f"{'method':<8} {'ranks':>5} {'G':>3} {'s/round':>9} {'clients/s':>10} {'speed-up':>9} {'dev s':>8} "
          f"{'peak MiB/rank':>14} {'peak MiB sum':>13} {'max |update|':>13} {'max |dp| vs G1':>15}")  # fmt: skip
    for r in rows:
        if "error" in r:
            failures += 1
            print(f"{r['method']:<8} {r['ranks']:>5} {r['clients_per_step']:>3}  ERROR: {r['error'][:300]}")
            continue
        b = base.get(r["method"])
        speed = b["seconds"] / r["seconds"] if b else math.nan
        diff = float(np.abs(np.load(r["params_file"]) - ref[r["method"]]).max()) if r["method"] in ref else math.nan
        print(f"{r['method']:<8} {r['ranks']:>5} {r['clients_per_step']:>3} {r['seconds']:>9.3f} {r['clients_per_second']:>10.2f} "
              f"{speed:>8.2f}x {r['device_seconds']:>8.2f} {_mib(r['peak_memory_max']):>14} {_mib(r['peak_memory_sum']):>13} "
              f"{r['update']:>13.2e} {diff:>15.2e}")  # fmt: skip
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU, tiny T5, 4 clients: seconds")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--device", choices=["cuda", "cpu", "auto"], default="cuda")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["fedavg", "ours"])
    parser.add_argument("--groups", nargs="+", type=int, default=[1, 2, 4], help="clients per step on 1 rank")
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4], help="ranks per GPU")
    parser.add_argument("--full-grid", action="store_true", help="every G at every rank count")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per subprocess")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)
    if args.quick:
        args.device = "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        print("[gpu_round] no CUDA device visible; use --quick for the CPU form", flush=True)
        return 2
    if args.device == "cuda":
        print(f"[gpu_round] {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {args.precision}", flush=True)
    started = time.perf_counter()
    rows, codes = [], []
    with tempfile.TemporaryDirectory(prefix="gpu_round-") as tmp:
        for ranks in args.ranks:
            groups = args.groups if ranks == 1 or args.full_grid else [1]
            code, got = _launch(ranks, groups, args, Path(tmp))
            codes.append(code)
            rows += got
        failures = report(rows)
    print(f"[gpu_round] {len(rows)} variants, {failures} failed, subprocess exit codes {codes}, "
          f"{time.perf_counter() - started:.0f} s in all", flush=True)  # fmt: skip
    return 1 if failures or any(codes) or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
