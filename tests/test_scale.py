"""100,000 logical clients: what a rank holds for them stays within a few tens of MB."""

from __future__ import annotations

import tracemalloc

import numpy as np

from fedmpi import seeding
from fedmpi.config import FedAvgConfig, ServerConfig
from fedmpi.models.groups import GroupMap
from fedmpi.data import partition_iid
from fedmpi.server import Server
from fedmpi.strategies.fedavg import FedAvg
from fedmpi.placement import assign_by_work

NUM_CLIENTS = 100_000
NUM_EXAMPLES = 400_000


def _fedavg(numel: int) -> FedAvg:
    return FedAvg(FedAvgConfig(), GroupMap.empty(numel))


def test_per_client_state_for_100k_clients_is_small():
    tracemalloc.start()
    partition = partition_iid(NUM_EXAMPLES, NUM_CLIENTS, seeding.rng(0, seeding.PARTITION))
    work = np.diff(partition.offsets) * 64  # what client_token_counts gives at 64 tokens per example
    server = Server(
        ServerConfig(num_clients_per_round=20, selection="loss"), _fedavg(10), NUM_CLIENTS, np.zeros(10, np.float32), 0
    )
    for round_ in range(1, 4):
        selected = server.select(round_)
        assign_by_work(selected, work, list(range(8)), 4)
        server.last_loss[selected] = 1.0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert partition.num_clients == NUM_CLIENTS and partition.sizes().sum() == NUM_EXAMPLES
    # The index array itself (400k int64 = 3.2 MB) plus offsets and the server's table.
    assert peak < 30 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_loss_selection_visits_every_client_before_repeating():
    server = Server(ServerConfig(num_clients_per_round=20, selection="loss"), _fedavg(1), 1000, np.zeros(1, np.float32), 0)
    seen = []
    for round_ in range(1, 51):
        selected = server.select(round_)
        seen += selected.tolist()
        server.last_loss[selected] = 0.5
    assert sorted(seen) == list(range(1000))
