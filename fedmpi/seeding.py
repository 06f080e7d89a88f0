"""Random streams keyed by (seed, round, client, purpose).

Every random decision of a run draws from a stream derived from these keys alone, never
from a process-wide generator, so results do not depend on which rank does the work or
how many ranks there are.
"""

from __future__ import annotations

import zlib

import numpy as np

# Named purposes, hashed to stable integers (zlib.crc32 does not change between runs,
# unlike Python's hash()).
INIT = "init"
PARTITION = "partition"
SELECT = "select"
SHUFFLE = "shuffle"
DROPOUT = "dropout"
PRUNE = "prune"
DEVICES = "devices"  # which device class each client owns
LORA_RANK = "lora_rank"  # per-client LoRA rank (HetLoRA, FlexLoRA)
LORA_INIT = "lora_init"  # fresh adapters each round (FLoRA)
EVAL_SUBSET = "eval_subset"


def _key(purpose: str) -> int:
    return zlib.crc32(purpose.encode())


def seed_sequence(seed: int, purpose: str, round_: int = 0, client: int = 0) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, _key(purpose), round_, client])


def rng(seed: int, purpose: str, round_: int = 0, client: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(seed, purpose, round_, client))


def torch_seed(seed: int, purpose: str, round_: int = 0, client: int = 0) -> int:
    """A 63-bit seed for torch.manual_seed from the same keys."""
    return int(seed_sequence(seed, purpose, round_, client).generate_state(1, np.uint64)[0] >> np.uint64(1))
