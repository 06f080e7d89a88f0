"""Pure helpers of the round loop: who trains what, evaluation order, upload sizes, MPI isolation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from fedmpi.evaluation import batch_bounds, combine
from fedmpi.models.groups import GroupFamily, GroupMap
from fedmpi.worker import UploadSizer


def test_evaluation_batches_reassemble_in_order_whatever_the_rank_count():
    bounds = batch_bounds(10, 3)
    assert bounds == [(0, 3), (3, 6), (6, 9), (9, 10)]
    losses = np.arange(10, dtype=np.float64)
    correct = (np.arange(10) % 2).astype(np.float64)

    def per_rank(size):
        return [[(losses[a:b], {"accuracy": correct[a:b]}) for a, b in bounds[r::size]] for r in range(size)]

    results = {size: combine(per_rank(size), len(bounds)) for size in (1, 2, 3, 4)}
    assert {r.loss for r in results.values()} == {4.5}
    assert {r.metric for r in results.values()} == {0.5}
    assert all(r.metrics == {"accuracy": 0.5} for r in results.values())


def test_upload_sizer_counts_adapter_bytes_without_task_head():
    head_index = np.array([-1, -1, -1, 0, 0, 1, 1, 2, 2], dtype=np.int32)
    task_head = np.array([False, False, True] + [False] * 6)  # element 2 is the classifier
    sizer = UploadSizer(GroupMap((GroupFamily("attn", "self", 3, 2),), head_index), task_head)
    assert sizer(None) == 4 * (2 + 6)
    assert sizer(np.array([True, False, False])) == 4 * (2 + 2)


def test_only_the_comm_layer_imports_mpi4py():
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"  # any import of mpi4py now fails
        "import fedmpi.simulation, fedmpi.launch, fedmpi.submit, fedmpi.analyze, fedmpi.strategies, fedmpi.data\n"
        "from fedmpi.comm import create_comm; assert create_comm('local').size == 1\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
