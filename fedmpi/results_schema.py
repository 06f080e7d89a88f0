"""Names and dtypes of the HDF5 result file: the one contract between the rank-0 writer and fedmpi.analyze.

It imports nothing, so the writer, the analysis CLI and notebooks can all use it for free.
Change a name or a meaning here -> bump FORMAT_VERSION. Dtypes are numpy dtype names
("str" means a variable-length UTF-8 string, ``h5py.string_dtype()``).
"""

FORMAT_VERSION = 2  # 2: heads became parameter groups (/groups, group_mask, num_groups_total)

# --- root attributes ------------------------------------------------------------------------
ATTR_FORMAT_VERSION = "format_version"
ATTR_RUN_NAME = "run_name"
ATTR_CONFIG_YAML = "config_yaml"  # the resolved config, as YAML text
ATTR_FEDMPI_VERSION = "fedmpi_version"
ATTR_TORCH_VERSION = "torch_version"
ATTR_TRANSFORMERS_VERSION = "transformers_version"
ATTR_PEFT_VERSION = "peft_version"
ATTR_PYTHON_VERSION = "python_version"
ATTR_NUM_RANKS = "num_ranks"
ATTR_STARTED_AT = "started_at"  # ISO 8601
ATTR_STATUS = "status"  # one of STATUSES
ATTR_METRIC = "metric"  # one of METRICS
ATTR_TASK_KIND = "task_kind"  # one of TASK_KINDS
ATTR_NUM_CLIENTS = "num_clients"
ATTR_NUM_GROUPS_TOTAL = "num_groups_total"  # parameter groups (heads, blocks, ...); 0 if the strategy has none
ATTR_ERROR = "error"  # only when status is "failed": the message

STATUS_RUNNING = "running"  # also what a killed run leaves behind
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"
STATUSES = (STATUS_RUNNING, STATUS_COMPLETE, STATUS_FAILED)

METRIC_ACCURACY = "accuracy"
METRIC_ROUGE_L = "rougeL"
METRICS = (METRIC_ACCURACY, METRIC_ROUGE_L)

TASK_CLASSIFICATION = "classification"
TASK_GENERATION = "generation"
TASK_KINDS = (TASK_CLASSIFICATION, TASK_GENERATION)

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
    "seconds": "float64",  # wall time of the round
    "sparsity": "float64",  # realised: mean over the round's clients of 1 - uploaded groups / groups
    "ops": "float64",  # analytic OPs summed over the round's clients
}

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
    "seconds": "float64",
    "ops": "float64",
    "sparsity": "float64",  # realised: 1 - uploaded groups / groups (0 when everything was sent)
}
# Added after format 1's first files: readers treat them as optional.
CLIENT_DEVICE_COLUMNS: dict[str, str] = {
    "device_seconds": "float64",  # device time (CUDA events; wall time on the CPU); a shared step is split by samples
    "peak_memory_bytes": "float64",  # peak device memory while it trained (NaN on the CPU)
}
CLIENT_GROUP_COLUMNS: dict[str, str] = {
    "importance": "float32",  # per group; NaN where the strategy measures none
    "group_mask": "bool",  # per group: uploaded
}

# --- /groups: only when num_groups_total > 0; one row per family (a module owning consecutive groups:
# an attention module's heads, ...). Family f's group g is column offsets[f] + g of the 2-D client columns.
GROUP_GROUPS = "groups"
GROUP_COLUMNS: dict[str, str] = {
    "family_names": "str",
    "family_kinds": "str",  # self | encoder_self | decoder_self | cross (heads) | block | triplet
    "num_groups": "int32",
}

# --- /final: only when the run completed.
GROUP_FINAL = "final"
FINAL_TRAINABLE = "final/trainable"  # float32 1-D: the final global trainable vector

# --- /checkpoint: the server's state after the last completed round, rewritten every round;
# what output.resume=true continues from. attrs: round (int), global_loss (float).
GROUP_CHECKPOINT = "checkpoint"
CHECKPOINT_ARRAYS: dict[str, str] = {
    "trainable": "float32",  # the global trainable vector
    "last_loss": "float64",  # per client: loss of its last participation (+inf: never seen)
    "times_seen": "int32",  # per client: participations so far
}
CHECKPOINT_STRATEGY = "strategy"  # subgroup of /checkpoint: the strategy's server state, one array per name
ATTR_CHECKPOINT_ROUND = "round"
ATTR_CHECKPOINT_GLOBAL_LOSS = "global_loss"
