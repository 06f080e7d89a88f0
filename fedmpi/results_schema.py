"""Names and dtypes of the HDF5 result file: the one contract between the rank-0 writer and fedmpi.analyze.

It imports nothing, so the writer, the analysis CLI and notebooks can all use it for free.
Change a name or a meaning here -> bump FORMAT_VERSION. Dtypes are numpy dtype names
("str" means a variable-length UTF-8 string, ``h5py.string_dtype()``).
"""

# 2: heads became parameter groups (/groups, group_mask, num_groups_total)
# 3: the checkpoint in its own file, rejected updates, resume records
FORMAT_VERSION = 3

# --- root attributes ------------------------------------------------------------------------
ATTR_FORMAT_VERSION = "format_version"
ATTR_RUN_NAME = "run_name"
ATTR_CONFIG_YAML = "config_yaml"  # the resolved config, as YAML text
ATTR_FEDMPI_VERSION = "fedmpi_version"
ATTR_TORCH_VERSION = "torch_version"
ATTR_TRANSFORMERS_VERSION = "transformers_version"
ATTR_PEFT_VERSION = "peft_version"
ATTR_PYTHON_VERSION = "python_version"
ATTR_NUM_RANKS = "num_ranks"  # of the first run; resumptions are recorded below
ATTR_RESUMED_AT = "resumed_at"  # only when resumed: ISO 8601 times, one per resumption
ATTR_RESUMED_NUM_RANKS = "resumed_num_ranks"  # only when resumed: int32, the ranks of each resumption
ATTR_STARTED_AT = "started_at"  # ISO 8601
ATTR_STATUS = "status"  # one of STATUSES
ATTR_METRIC = "metric"  # one of METRICS
ATTR_TASK_KIND = "task_kind"  # one of TASK_KINDS
ATTR_NUM_CLIENTS = "num_clients"
ATTR_NUM_GROUPS_TOTAL = "num_groups_total"  # parameter groups (heads, blocks, ...); 0 if the strategy has none
ATTR_ERROR = "error"  # only when status is "failed": the message
# How eval_metric was scored, as resolved (server.evaluation, else the strategy's default; a task without
# class labels is always global): one of EVALUATIONS. Files written before it existed lack it (global).
ATTR_EVALUATION = "evaluation"

STATUS_RUNNING = "running"  # also what a killed run leaves behind
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"
STATUSES = (STATUS_RUNNING, STATUS_COMPLETE, STATUS_FAILED)

METRIC_ACCURACY = "accuracy"
METRIC_ROUGE_L = "rougeL"
METRICS = (METRIC_ACCURACY, METRIC_ROUGE_L)  # the run's metric (eval_metric)
# What a generation task reports (rouge-score's names, F1): the run's metric first.
METRIC_ROUGE_1 = "rouge1"
METRIC_ROUGE_2 = "rouge2"
GENERATION_METRICS = (METRIC_ROUGE_L, METRIC_ROUGE_1, METRIC_ROUGE_2)

TASK_CLASSIFICATION = "classification"
TASK_GENERATION = "generation"
TASK_KINDS = (TASK_CLASSIFICATION, TASK_GENERATION)

EVALUATION_GLOBAL = "global"  # the evaluated examples as they are
EVALUATION_PERSONAL = "personal"  # each score on the label mix of one of the latest round's clients
EVALUATIONS = (EVALUATION_GLOBAL, EVALUATION_PERSONAL)

# --- /rounds: one row per round, incl. round 0 (the initial global model, evaluated before training);
# 1-D resizable datasets of equal length, flushed after every round.
GROUP_ROUNDS = "rounds"
ROUND_COLUMNS: dict[str, str] = {
    "round": "int32",
    "num_selected": "int32",
    "train_loss": "float64",  # sample-weighted mean over the round's clients; NaN at round 0
    "eval_loss": "float64",  # NaN if not evaluated this round
    "eval_metric": "float64",  # NaN if not evaluated this round
    "global_loss": "float64",  # L_g (= eval_loss)
    "upload_bytes_paper": "int64",  # summed over the round's clients, the paper's convention
    "mpi_bytes": "int64",  # bytes that really crossed MPI this round
    # Download, beside upload. Paper convention: fp32 bytes of the global state each selected
    # client receives (the adapter elements it trains, the task head excluded as in the upload;
    # plus the full-size frozen-weight update of FLoRA / FedEx-LoRA), summed over the round's clients.
    "download_bytes_paper": "int64",
    # Really moved: bytes rank 0 sent this round (selection, round message, the new global vector,
    # frozen-weight updates, per-client private state); 0 on one rank, grows with the rank count:
    # (ranks - 1) x the round's clients' download_bytes_mpi.
    "download_bytes_mpi": "int64",
    "seconds": "float64",  # wall time of the round
    "sparsity": "float64",  # realised: mean of the round's clients' sparsity
    "ops": "float64",  # analytic OPs summed over the round's clients
    "num_rejected": "int32",  # client updates rejected as non-finite (server.on_nonfinite=skip)
}
# Further /rounds columns (float64) of metrics beside eval_metric: column -> metric name. NaN
# where the task does not report the metric (classification) or the round was not evaluated.
# Written by every run; files from before they existed lack them, so readers do not require them.
ROUND_METRIC_COLUMNS: dict[str, str] = {
    "eval_rouge1": METRIC_ROUGE_1,
    "eval_rouge2": METRIC_ROUGE_2,
}

# Columns added after a format version was fixed: writers always write them, readers must not
# require them (files written before they existed lack them).
OPTIONAL_COLUMNS = frozenset({"download_bytes_paper", "download_bytes_mpi"})

# --- /clients: one row per (round, client) participation; 1-D resizable datasets, plus the
# 2-D CLIENT_GROUP_COLUMNS of shape (rows, num_groups_total) when num_groups_total > 0.
GROUP_CLIENTS = "clients"
CLIENT_COLUMNS: dict[str, str] = {
    "round": "int32",
    "client": "int64",
    "rank": "int32",
    "num_samples": "int64",
    "train_loss": "float64",
    "upload_bytes_paper": "int64",
    "upload_bytes_mpi": "int64",
    "download_bytes_paper": "int64",  # this client's share of the round's download_bytes_paper
    # What a rank receives over MPI to train this client this round: one copy of rank 0's broadcasts
    # (pickled selection and round message, incl. FedSA-LoRA's private states of every selected client;
    # the new global vector, raw fp32; frozen weights). Like upload_bytes_mpi, counted whether or not the
    # client's rank is 0: the same on any number of ranks, and for every client of a round.
    "download_bytes_mpi": "int64",
    "seconds": "float64",
    "ops": "float64",
    # Realised (Strategy.realised_sparsity): 1 - uploaded groups / groups (0 when everything was sent);
    # the LoRA strategies count heads only (strategy.head_pruning; 0 without it), never the A groups.
    "sparsity": "float64",
    "rejected": "bool",  # the update was not finite and was left out of the aggregate
}
# Written by every run, optional for readers (files from before they existed lack them):
CLIENT_COST_COLUMNS: dict[str, str] = {
    # Measured per client-round (fedmpi.measure): CUDA max allocated or CPU peak RSS; bytes autograd kept.
    "peak_memory_bytes": "float64",
    # CUDA-event seconds of the training (NaN on the CPU); a shared step (clients_per_step > 1) is split by samples.
    "device_seconds": "float64",
    "saved_activation_bytes": "int64",
    # The device budget it had (index into the config's devices.classes; -1: none) and what the
    # strategy planned with (NaN where it plans nothing): layer finetuning's fedmpi.budgets figures.
    "device_class": "int32",
    "planned_memory_bytes": "float64",
    "planned_flops": "float64",
    "planned_upload_bytes": "float64",
    # FedARA: SVD adapter modules whose adapter branch never ran in the client's training (left at
    # rank 0 and switched off), counted by forward hooks on the real forward; -1 where no strategy
    # switches modules off. Per-module ranks are the group_mask summed over each /groups family.
    "skipped_modules": "int32",
}
CLIENT_IMPORTANCE = "importance"  # per group, as uploaded: 0 for pruned groups; NaN where the strategy measures none
CLIENT_GROUP_MASK = "group_mask"  # per group: uploaded
# Per group, every group's score as the client measured it, pruned ones included (Fig. 5); NaN where the
# strategy measures none. Added within format_version 3: files written before it lack it (readers must
# not require it; output.resume adds it, NaN for the rows already there).
CLIENT_MEASURED_IMPORTANCE = "measured_importance"
CLIENT_GROUP_COLUMNS: dict[str, str] = {
    CLIENT_IMPORTANCE: "float32",
    CLIENT_GROUP_MASK: "bool",
    CLIENT_MEASURED_IMPORTANCE: "float32",
}

# --- /groups: only when num_groups_total > 0; one row per family (a module owning consecutive groups:
# an attention module's heads, ...). Family f's group g is column offsets[f] + g of the 2-D client columns.
GROUP_GROUPS = "groups"
GROUP_COLUMNS: dict[str, str] = {
    "family_names": "str",
    "family_kinds": "str",  # HEAD_FAMILY_KINDS (heads) | block | triplet | factor (a LoRA module's A or B)
    "num_groups": "int32",
}
# The family kinds whose groups are attention heads; fedmpi.models.groups.ATTENTION_KINDS is this tuple.
HEAD_FAMILY_KINDS = ("self", "encoder_self", "decoder_self", "cross")

# --- /devices: the device profile table (the config's devices.classes), one row per class in config
# order, row k being /clients/device_class k; zero rows when the run declares no classes. NaN budget:
# unlimited. Added within format_version 3 (additive): files written before it lack the group, so
# readers must not require it.
GROUP_DEVICES = "devices"
DEVICE_COLUMNS: dict[str, str] = {
    "name": "str",
    "share": "float64",  # of the clients, as configured
    "num_clients": "int64",  # clients drawn into the class (fedmpi.devices.class_counts)
    "memory_bytes": "float64",  # peak training memory budget
    "flops_per_round": "float64",
    "upload_bytes_per_round": "float64",
    "speed": "float64",  # relative compute speed (recorded, not simulated)
}

# --- /final: only when the run completed.
GROUP_FINAL = "final"
FINAL_TRAINABLE = "final/trainable"  # float32 1-D: the final global trainable vector

# --- the checkpoint: its own file <name>.ckpt.h5 beside <name>.h5, replaced (written under a
# temporary name, then renamed) after every round; the server's state after the last completed
# round, what output.resume=true continues from. Datasets below; attrs: round (int), global_loss (float).
CHECKPOINT_SUFFIX = ".ckpt.h5"
CHECKPOINT_ARRAYS: dict[str, str] = {
    "trainable": "float32",  # the global trainable vector
    "last_loss": "float64",  # per client: loss of its last participation (+inf: never seen)
    "times_seen": "int32",  # per client: participations so far
}
CHECKPOINT_STRATEGY = "strategy"  # group of the checkpoint file: the strategy's server state, one array per name
ATTR_CHECKPOINT_ROUND = "round"
ATTR_CHECKPOINT_GLOBAL_LOSS = "global_loss"
