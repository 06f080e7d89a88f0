"""A rank's thread count follows the launcher's allocation (fedmpi.runtime.threads_per_rank)."""

from __future__ import annotations

import pytest

from fedmpi.runtime import threads_per_rank

NODE = frozenset(range(16))


def cores(first: int, count: int) -> frozenset[int]:
    return frozenset(range(first, first + count))


@pytest.mark.parametrize(
    "num_threads, environ, mine, node_ranks, expected",
    [
        # runtime.num_threads wins over everything.
        (3, {"SLURM_CPUS_PER_TASK": "8", "OMP_NUM_THREADS": "2"}, NODE, [NODE] * 4, 3),
        # Slurm's --cpus-per-task, then OMP_NUM_THREADS.
        (None, {"SLURM_CPUS_PER_TASK": "8", "OMP_NUM_THREADS": "2"}, NODE, [NODE] * 4, 8),
        (None, {"OMP_NUM_THREADS": "2"}, NODE, [NODE] * 4, 2),
        # Unusable values are skipped, not obeyed.
        (None, {"SLURM_CPUS_PER_TASK": "", "OMP_NUM_THREADS": "0"}, NODE, [NODE] * 4, 4),
        # Every rank sees the whole node: 16 cores / 4 ranks.
        (None, {}, NODE, [NODE] * 4, 4),
        # 4 tasks x 4 cpus each pinned to their own cores (srun --cpu-bind, mpirun --bind-to): all 4 each.
        (None, {}, cores(4, 4), [cores(0, 4), cores(4, 4), cores(8, 4), cores(12, 4)], 4),
        # Two ranks share one 8-core set, two others have their own: the sharers split theirs.
        (None, {}, cores(0, 8), [cores(0, 8), cores(0, 8), cores(8, 4), cores(12, 4)], 4),
        # One rank on 3 cores with nothing else: 3; never fewer than 1.
        (None, {}, cores(0, 3), [cores(0, 3)], 3),
        (None, {}, cores(0, 1), [cores(0, 1)] * 3, 1),
    ],
)
def test_threads_per_rank(num_threads, environ, mine, node_ranks, expected):
    assert threads_per_rank(num_threads, environ, mine, node_ranks) == expected
