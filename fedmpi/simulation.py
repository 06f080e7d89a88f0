"""The federated round loop, identical in one process and under mpirun.

Per round: rank 0 selects clients and broadcasts them; every training rank trains its
share; the ranks' packed sparse updates are gathered to rank 0, which combines them in
client id order and broadcasts the new global vector; the ranks evaluate it together.
Each phase of local work runs through ``collective``, so a failure on any rank ends the
job on all ranks with one message. Round 0 evaluates the initial model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedmpi import accounting, output_files, runtime, seeding
from fedmpi import results_schema as S
from fedmpi.client import LocalTrainer
from fedmpi.comm import Communicator, RankFailure, collective, pickled_size
from fedmpi.config import Config
from fedmpi.devices import profile_table
from fedmpi.data import Partition, TaskData, TokenizedSplit, load_task, partition_dirichlet, partition_iid, tokenize_split
from fedmpi.evaluation import EvalResult, LabelMix, batch_bounds, combine, eval_examples
from fedmpi.models import HeadConfidence, ModelBundle, build_model, hf_model, use_confidence_attention
from fedmpi.models.limits import check_lengths
from fedmpi.models.exclusion import importance_options
from fedmpi.models.head_subset import check_supported
from fedmpi.peft_methods import PeftMethod, method_from_config
from fedmpi.payload import ClientUpdate, pack, unpack
from fedmpi.progress import Progress
from fedmpi.results import ResultWriter
from fedmpi.server import Server
from fedmpi.models.arch import arch_spec
from fedmpi.placement import assign_by_work, client_token_counts
from fedmpi.strategies import STRATEGIES, RunInfo
from fedmpi.worker import Worker


@dataclass
class _Parts:
    cfg: Config  # the run's config, with the chosen backbone as model.name (layer finetuning's pool)
    worker: Worker
    params: np.ndarray  # the global trainable vector, replicated on every rank
    num_eval: int
    worker_ranks: list[int]
    task_kind: str
    client_work: np.ndarray  # tokens per client: the work that places clients on ranks
    clients_per_step: int
    label_mix: LabelMix | None = None  # server.evaluation=personal on a classification task
    first_round: int = 0  # > 0 when resuming
    server: Server | None = None  # rank 0 only
    writer: ResultWriter | None = None  # rank 0 only


def result_path(cfg: Config, name: str) -> Path:
    return output_files.check_result_path(Path(cfg.output.dir), name, replace=cfg.output.overwrite or cfg.output.resume)


def _worker_ranks(cfg: Config, comm: Communicator) -> list[int]:
    if cfg.server.trains_clients:
        return list(range(comm.size))
    if comm.size < 2:
        raise ValueError("server.trains_clients=false needs at least 2 ranks (rank 0 would only serve)")
    return list(range(1, comm.size))


def _load_task(cfg: Config) -> TaskData:
    d = cfg.data
    return load_task(
        d.source, path=d.path, train_file=d.train_file, eval_file=d.eval_file, input_field=d.input_field,
        pair_field=d.pair_field, label_field=d.label_field, target_field=d.target_field, seed=cfg.seed, max_train_samples=d.max_train_samples,
        max_eval_samples=d.max_eval_samples, strip_headers=d.strip_headers, num_train=d.num_train, num_eval=d.num_eval,
    )  # fmt: skip


def _peft_method(cfg: Config) -> PeftMethod:
    """The strategy's own PEFT method (layer finetuning's blocks, FedARA's SVD adapters), else peft.method."""
    own = STRATEGIES[cfg.strategy.name].peft_method(cfg.strategy, cfg.peft.lora)
    return own if own is not None else method_from_config(cfg.peft)


def _build_model(cfg: Config, task: TaskData, device: torch.device) -> ModelBundle:
    bundle = build_model(
        cfg.model.name, kind=task.kind, num_labels=task.num_labels, method=_peft_method(cfg),
        seed=seeding.torch_seed(cfg.seed, seeding.INIT), attn_implementation=cfg.model.attn_implementation,
    )  # fmt: skip
    bundle.model.to(device)
    return bundle


def _task_head(bundle: ModelBundle, kind: str) -> tuple[str, ...]:
    spec = arch_spec(bundle.model.config.model_type)
    return tuple(spec.task_head) if (spec and kind == "classification") else ()


def _choose_backbone(cfg: Config, task: TaskData, device: torch.device, progress: Progress) -> Config:
    """Layer finetuning's backbone choice before round 1: ``cfg`` with model.name the candidate of
    ``strategy.backbone_candidates`` whose mean n_c over the device classes is highest (unchanged
    without candidates). Each candidate is built as the run would build it (so the LoRA variant
    counts its adapters), at the mean client's samples per round."""
    candidates = getattr(cfg.strategy, "backbone_candidates", ())
    if not candidates:
        return cfg
    from fedmpi.budgets import TrainingShape, choose_backbone
    from fedmpi.models.blocks import model_sizes
    from fedmpi.strategies.layer_finetuning import UNLIMITED

    sizes = {}
    for name in candidates:
        trial = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": name})})
        bundle = _build_model(trial, task, device)
        sizes[name] = model_sizes(bundle.model, list(_task_head(bundle, task.kind)), bundle.model.config)
        del bundle
    shape = TrainingShape(cfg.client.batch_size, cfg.data.max_length, cfg.strategy.dtype_bytes)
    samples = max(1, len(task.train.inputs) // cfg.data.num_clients) * cfg.client.num_epochs
    best, means = choose_backbone(sizes, shape, cfg.devices.classes or (UNLIMITED,), samples)
    scored = ", ".join(f"{n} {m:.2f}" for n, m in means.items())
    progress.say(f"backbone: {best} (mean n_c over the device classes at {samples} samples/round: {scored})")
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": best})})


def _partition(cfg: Config, train: TokenizedSplit) -> Partition:
    d, rng = cfg.data, seeding.rng(cfg.seed, seeding.PARTITION)
    if d.partition == "iid":
        return partition_iid(len(train), d.num_clients, rng)
    if train.labels is None:
        raise ValueError("data.partition=dirichlet needs class labels; use data.partition=iid for generation tasks")
    return partition_dirichlet(train.labels, d.num_clients, d.dirichlet_alpha, rng)


def _ops_per_sample(bundle: ModelBundle, cfg: Config) -> Callable[[float, int | None], float]:
    """The paper's analytic OPs of one training sequence (Appendix A, T = 512), given the sparsity and
    the client's LoRA rank (None: ``peft.lora.rank``; HetLoRA and FlexLoRA clients train their own).

    NaN where its rules do not apply: another architecture, adapters other than head-pruned
    LoRA (layer finetuning's and FedARA's planned or measured costs are recorded instead), or
    a client that uploaded no group at all.
    """
    try:
        dims = accounting.attention_dims(hf_model(bundle.model).config)
    except ValueError:  # an architecture the paper's OPs rules do not cover
        return lambda sparsity, rank=None: float("nan")
    if not STRATEGIES[cfg.strategy.name].paper_ops:
        return lambda sparsity, rank=None: float("nan")
    return lambda sparsity, rank=None: (
        accounting.ops_per_sequence(dims, peft=cfg.peft.method, rank=cfg.peft.lora.rank if rank is None else rank,
                                    sparsity=sparsity)
        if sparsity < 1 else float("nan")
    )


def _build(cfg: Config, comm: Communicator, progress: Progress) -> _Parts:
    """Every rank: device, data, model, partition and the worker role. Writes no file."""
    device, threads = runtime.configure(cfg.runtime, comm)
    worker_ranks = _worker_ranks(cfg, comm)
    task = _load_task(cfg)
    progress.say(f"data: {task.name} ({task.kind}), {len(task.train.inputs)} train / {len(task.eval.inputs)} eval examples")
    cfg = _choose_backbone(cfg, task, device, progress)
    bundle = _build_model(cfg, task, device)
    target_length = cfg.data.max_target_length if task.kind == "generation" else None
    check_lengths(hf_model(bundle.model).config, max_length=cfg.data.max_length, max_target_length=target_length)
    lengths = dict(kind=task.kind, max_length=cfg.data.max_length, max_target_length=cfg.data.max_target_length,
                   causal_lm=bundle.causal_lm)
    train = tokenize_split(task.train, bundle.tokenizer, **lengths)
    evaluation = tokenize_split(task.eval, bundle.tokenizer, **lengths)
    partition = _partition(cfg, train)
    run = RunInfo(
        seed=cfg.seed, num_rounds=cfg.server.num_rounds, num_clients=cfg.data.num_clients,
        batch_size=cfg.client.batch_size, num_epochs=cfg.client.num_epochs, max_length=cfg.data.max_length,
        devices=cfg.devices, model=bundle.model, task_head=_task_head(bundle, task.kind),
        client_samples=partition.sizes(),
    )  # fmt: skip
    strategy = STRATEGIES[cfg.strategy.name].for_run(cfg.strategy, bundle, run)
    confidence = None
    if strategy.needs_confidence or strategy.removes_untrained:
        use_confidence_attention(bundle.model)  # SDPA underneath; it also slices T5's bias for removed heads
    if strategy.removes_untrained:
        check_supported(bundle.model)
    if strategy.needs_confidence:
        options = importance_options(
            strategy.importance_exclude, bundle.tokenizer, bundle.model.config, eos_token_id=bundle.eos_token_id,
            pad_token_id=bundle.pad_token_id, skip_first_queries=strategy.skip_first_queries,
        )  # fmt: skip
        confidence = HeadConfidence(bundle.model, bundle.head_map, options=options, pad_token_id=bundle.pad_token_id)
    rt = cfg.runtime
    trainer = LocalTrainer(bundle, train, cfg.client, device=device, seed=cfg.seed, confidence=confidence,
                           groups=strategy.groups, precision=rt.precision, dropout=rt.clients_per_step == 1)  # fmt: skip
    evaluated = eval_examples(len(evaluation), cfg.server.eval_samples, cfg.seed)
    worker = Worker(
        trainer, strategy, partition, evaluation, rank=comm.rank, seed=cfg.seed,
        ops_per_sample=_ops_per_sample(bundle, cfg), num_epochs=cfg.client.num_epochs,
        clients_per_step=rt.clients_per_step, eval_examples=evaluated,
    )  # fmt: skip
    personal = (cfg.server.evaluation or strategy.default_evaluation) == "personal"
    label_mix = _label_mix(personal, train, partition, evaluation.labels, evaluated, progress)
    params = bundle.layout.get_flat(bundle.model).cpu().numpy()
    groups = strategy.groups
    progress.say(
        f"model: {cfg.model.name}, {bundle.layout.numel:,} trainable parameters, "
        f"{groups.num_groups} groups in {len(groups.families)} families; device {device} "
        f"({rt.precision}, {rt.clients_per_step} client(s) per step), "
        f"{threads} thread(s) per rank, {comm.size} rank(s)"
    )
    progress.say(
        f"federation: {cfg.data.num_clients} clients ({cfg.data.partition}), {cfg.server.num_clients_per_round} per "
        f"round, {cfg.server.num_rounds} rounds; strategy {strategy.name}, selection {cfg.server.selection}"
    )
    return _Parts(cfg=cfg, worker=worker, params=params, num_eval=len(evaluated), worker_ranks=worker_ranks, task_kind=task.kind,
                  client_work=client_token_counts(partition, train), clients_per_step=rt.clients_per_step,
                  label_mix=label_mix)  # fmt: skip


def _label_mix(personal: bool, train: TokenizedSplit, partition: Partition, eval_labels: np.ndarray | None,
               evaluated: np.ndarray, progress: Progress) -> LabelMix | None:
    """Every rank (so a bad setting fails everywhere before round 0): the clients' label mixes, for a
    personal evaluation of a task with class labels (a generation task is evaluated globally)."""
    if not personal:
        return None
    if train.labels is None or eval_labels is None:
        progress.say("evaluation: global (a personal evaluation needs class labels; this task has none)")
        return None
    mix = LabelMix.build(train.labels, partition, eval_labels[evaluated])
    progress.say("evaluation: personal (each score is on the label mix of one of the latest round's clients)")
    if mix.missing:
        progress.say(f"personal evaluation: {len(mix.missing)} client(s) have classes no evaluated example has; "
                     "those classes are left out of their scores")
    return mix


def _open_results(cfg: Config, comm: Communicator, parts: _Parts, name: str, progress: Progress) -> None:
    """Rank 0, once every rank is set up: the server and the result file (new or resumed)."""
    groups = parts.worker.groups
    parts.server = Server(cfg.server, parts.worker.strategy, cfg.data.num_clients, parts.params, cfg.seed)
    path = result_path(cfg, name)
    devices = profile_table(cfg.devices, cfg.data.num_clients)
    if cfg.output.resume and ResultWriter.resumable(path):
        parts.writer, state = ResultWriter.resume(path, config_yaml=cfg.to_yaml(), num_ranks=comm.size, devices=devices)
        parts.server.restore(state)
        parts.params[:] = state.trainable
        parts.first_round = state.round + 1
        progress.say(f"resuming {path} after round {state.round}")
        return
    if cfg.output.resume:
        progress.say(f"nothing to resume in {path}: starting the run")
    parts.writer = ResultWriter(
        path, run_name=name, config_yaml=cfg.to_yaml(), num_ranks=comm.size, task_kind=parts.task_kind,
        num_clients=cfg.data.num_clients, group_families=[(f.name, f.kind, f.num_groups) for f in groups.families],
        devices=devices, evaluation=S.EVALUATION_GLOBAL if parts.label_mix is None else S.EVALUATION_PERSONAL,
    )  # fmt: skip


def _evaluate(comm: Communicator, parts: _Parts, batch_size: int, round_: int, clients: list[int]) -> EvalResult | None:
    """The round's eval loss and metrics on rank 0 (None elsewhere): of the global model, or the mean over
    the per-client models (``personal_evaluation``); with ``parts.label_mix``, each model is scored on the
    label mix of its client, and the global model on that of each of ``clients`` (this round's; none at
    round 0), and the scores are averaged."""
    bounds = batch_bounds(parts.num_eval, batch_size)
    mine = bounds[comm.rank :: comm.size]
    strategy, server = parts.worker.strategy, parts.server
    models = [(None, parts.params)]
    if strategy.personal_evaluation:  # per-client models (FedSA-LoRA); their mean is the round's figure
        models = comm.bcast(server.strategy.evaluation_models(parts.params) if server else None) or models
    evaluated = []
    for client, params in models:
        results = collective(comm, "evaluation", lambda: parts.worker.evaluate(mine, params), warmup=round_ <= 1)
        gathered = comm.gather(results)
        if gathered is None:  # ranks > 0
            continue
        weights = [None]
        if parts.label_mix is not None:  # a client's own model on its mix; the global one on each client's
            mixes = clients if client is None else [client]
            weights = [parts.label_mix.weights(c) for c in mixes] or [None]
        evaluated.extend(combine(gathered, len(bounds), w) for w in weights)
    if len(evaluated) <= 1:
        return evaluated[0] if evaluated else None
    return EvalResult(
        loss=float(np.mean([e.loss for e in evaluated])),
        metric=float(np.mean([e.metric for e in evaluated])),
        metrics={key: float(np.mean([e.metrics[key] for e in evaluated])) for key in evaluated[0].metrics},
    )


def _train_round(comm: Communicator, parts: _Parts, round_: int) -> tuple[list[ClientUpdate] | None, int, int]:
    """One round's training and aggregation; also the bytes rank 0 sent (the download over MPI, every
    rank's copy) and, on rank 0, one rank's copy of them (each client's download over MPI; 0 elsewhere)."""
    server = parts.server
    before = comm.bytes_moved
    sent = None
    if server is not None:
        selected = server.select(round_)
        sent = (selected, server.strategy.round_message(round_, selected))
    copy = 0 if sent is None else pickled_size(sent)
    selected, message = comm.bcast(sent)
    download = comm.bytes_moved - before
    plan = assign_by_work(selected, parts.client_work, parts.worker_ranks, parts.clients_per_step)
    mine = plan.get(comm.rank, [])
    updates = collective(
        comm, "training", lambda: parts.worker.train_clients(mine, parts.params, round_, message), warmup=round_ <= 1
    )
    buffer, meta = pack(updates)
    buffers = comm.gather_arrays(buffer)
    metas = comm.gather(meta)
    gathered = None
    if parts.server is not None:
        gathered = [u for b, m in zip(buffers, metas) for u in unpack(b, m)]
    collective(comm, "aggregation", lambda: parts.server.apply(gathered, round_) if parts.server else None, warmup=round_ <= 1)
    if parts.server is not None:
        parts.params[:] = parts.server.params
    before = comm.bytes_moved
    comm.bcast_array(parts.params)
    frozen = _sync_frozen_weights(comm, parts)
    if server is not None:
        copy += parts.params.nbytes + frozen
    return gathered, download + comm.bytes_moved - before, copy


def _sync_frozen_weights(comm: Communicator, parts: _Parts) -> int:
    """Every rank's model takes rank 0's frozen weights, for strategies that move them (FLoRA, FedEx-LoRA);
    the bytes of one rank's copy (0: none moved)."""
    strategy = parts.worker.strategy
    if not strategy.moves_frozen_weights:
        return 0
    frozen = strategy.frozen_weights() if parts.server is not None else strategy.frozen_weights().copy()
    comm.bcast_array(frozen)  # on ranks > 0 the local copy is only the buffer's shape
    strategy.set_frozen_weights(parts.worker.trainer.bundle.model, frozen)
    return frozen.nbytes


def run(cfg: Config, comm: Communicator, progress: Progress | None = None) -> Path | None:
    """Run one simulation; returns the result file's path on rank 0, None elsewhere."""
    progress = progress or Progress(enabled=comm.rank == 0)
    name = comm.bcast(output_files.run_name(cfg) if comm.rank == 0 else None)
    parts = collective(comm, "setup", lambda: _build(cfg, comm, progress), warmup=True)
    cfg = parts.cfg  # the backbone chosen from a candidate pool, if any, is the run's model.name
    collective(comm, "output", lambda: _open_results(cfg, comm, parts, name, progress) if comm.rank == 0 else None, warmup=True)
    writer, server = parts.writer, parts.server
    try:
        first_round = comm.bcast(parts.first_round)
        if first_round > 0:  # resumed: every rank continues from rank 0's checkpointed vector
            comm.bcast_array(parts.params)
            _sync_frozen_weights(comm, parts)
        for round_ in range(first_round, cfg.server.num_rounds + 1):
            start, moved = time.perf_counter(), comm.bytes_moved
            updates, download_mpi, client_download_mpi = _train_round(comm, parts, round_) if round_ > 0 else ([], 0, 0)
            last = round_ == cfg.server.num_rounds
            evaluate = round_ % cfg.server.eval_every == 0 or last
            clients = sorted(u.client for u in updates) if updates else []  # id order: rank-count invariant
            evaluated = _evaluate(comm, parts, cfg.server.eval_batch_size, round_, clients) if evaluate else None
            if server is not None:
                if evaluated is not None:
                    server.global_loss = evaluated.loss
                ordered = sorted(updates, key=lambda u: u.client)
                adapter_bytes = parts.worker.upload_size.download
                progress.round(
                    writer, round_, cfg.server.num_rounds, ordered, evaluated,
                    seconds=time.perf_counter() - start, mpi_bytes=comm.bytes_moved - moved, download_mpi=download_mpi,
                    client_download_mpi=client_download_mpi,
                    download_paper=[server.strategy.download_bytes(u.client, adapter_bytes) for u in ordered],
                    rejected=server.rejected if round_ > 0 else [],
                )  # fmt: skip
                writer.checkpoint(server.state(round_))
        if writer is not None:
            writer.finish(parts.params)
            progress.summary(writer.path)
            return writer.path
        return None
    except BaseException as exc:
        if writer is not None:
            writer.fail(str(exc) if isinstance(exc, RankFailure) else repr(exc))
        raise
    finally:
        if writer is not None:
            output_files.release(writer.path)
