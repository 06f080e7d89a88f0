"""What a rank can tell from its launcher's environment: alone in a world that should be N, stale MPICH files."""

from __future__ import annotations


from fedmpi.comm import LocalComm, alone_in_world_message, launcher_size
from fedmpi.comm import stale_shm


def test_a_rank_alone_while_srun_started_several_is_told_how_to_fix_it(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert launcher_size() == 1 and alone_in_world_message(LocalComm()) is None
    monkeypatch.setenv("SLURM_NTASKS", "2")  # srun under MpiDefault=none: no PMI variables at all
    message = alone_in_world_message(LocalComm())
    assert message is not None and "started 2 tasks" in message and "--mpi=pmi2" in message and "MpiDefault" in message
    monkeypatch.setenv("PMI_SIZE", "1")  # a PMI that says 1 wins over Slurm's count: a real 1-rank world
    assert alone_in_world_message(LocalComm()) is None


def test_only_unmapped_mpich_files_of_this_user_are_removed(tmp_path, monkeypatch):
    stale, other = tmp_path / "mpich_shm_aaaa_0", tmp_path / "unrelated"
    in_use = tmp_path / "mpich_shm_bbbb_0"
    for path in (stale, other, in_use):
        path.write_bytes(b"x")
    monkeypatch.setattr(stale_shm, "mapped_files", lambda: {str(in_use)})
    assert stale_shm.remove_stale(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mpich_shm_bbbb_0", "unrelated"]


def test_mapped_files_reads_proc_maps(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "maps").write_text(
        "7f00-7f01 rw-s 00000000 00:1a 12 /dev/shm/mpich_shm_cc_0\n7f02-7f03 r-xp 00000000 00:00 0 \n"
        "7f04-7f05 rw-s 00000000 00:1a 13 /dev/shm/old file (deleted)\n"
    )
    assert stale_shm.mapped_files(tmp_path) == {"/dev/shm/mpich_shm_cc_0", "/dev/shm/old file"}
