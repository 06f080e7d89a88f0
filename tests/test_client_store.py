"""Per-client state stores: get/put, checkpoint round trip, and a disk store resumed after a killed round."""

import numpy as np
import pytest

from fedmpi.client_store import DiskStore, MemoryStore, build_client_store


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_get_put_and_checkpoint_round_trip(kind, tmp_path):
    store = build_client_store(kind, tmp_path / "clients")
    assert store.get(3) is None
    store.put(3, 1, np.array([1.0, 2.0]))
    store.put(7, 1, np.array([3.0, 4.0]))
    store.commit(1)
    store.put(3, 2, np.array([5.0, 6.0]))
    store.commit(2)
    assert store.get(3).tolist() == [5.0, 6.0] and store.get(7).tolist() == [3.0, 4.0]
    assert store.get(3).dtype == np.float32 and len(store) == 2
    restored = build_client_store(kind, tmp_path / "clients")
    restored.load_state(store.state())
    assert restored.get(3).tolist() == [5.0, 6.0] and restored.get(7).tolist() == [3.0, 4.0]


def test_memory_store_returns_copies():
    store = MemoryStore()
    values = np.array([1.0], dtype=np.float32)
    store.put(0, 1, values)
    values[0] = 9.0
    store.get(0)[0] = 8.0
    assert store.get(0).tolist() == [1.0]


def test_disk_store_resume_drops_versions_after_the_checkpoint(tmp_path):
    store = DiskStore(tmp_path)
    store.put(1, 1, np.array([1.0]))
    store.commit(1)
    checkpoint = store.state()  # the run's checkpoint after round 1
    store.put(1, 2, np.array([2.0]))  # round 2 is killed before its checkpoint
    assert store.get(1).tolist() == [2.0]
    resumed = DiskStore(tmp_path)
    resumed.load_state(checkpoint)
    assert resumed.get(1).tolist() == [1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1.r1.npy"]


def test_disk_store_keeps_one_version_once_checkpoints_pass(tmp_path):
    store = DiskStore(tmp_path)
    for round_ in (1, 2, 3):
        store.put(5, round_, np.array([float(round_)]))
        store.commit(round_)
    # round 3 superseded r2, which stays until round 3's checkpoint is known to be written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c5.r2.npy", "c5.r3.npy"]
    resumed = DiskStore(tmp_path)
    resumed.load_state(store.state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c5.r3.npy"]


def test_unknown_kind_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown kind 'redis'"):
        build_client_store("redis", tmp_path)
