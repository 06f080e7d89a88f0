"""Data: loading tasks by source name, tokenising them compactly, partitioning over clients.

No MPI here: every function is pure given its inputs (and a seeded generator), so each
rank can rebuild the same data and partition independently.
"""

from fedmpi.data.partition import Partition, partition_dirichlet, partition_iid
from fedmpi.data.sources import SOURCES, load_task
from fedmpi.data.task import TaskData, TextSplit
from fedmpi.data.tokenize import Ragged, TokenizedSplit, collate, tokenize_split

__all__ = [
    "SOURCES",
    "Partition",
    "Ragged",
    "TaskData",
    "TextSplit",
    "TokenizedSplit",
    "collate",
    "load_task",
    "partition_dirichlet",
    "partition_iid",
    "tokenize_split",
]
