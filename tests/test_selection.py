"""Client selection: random and loss difference (Eq. 9)."""

import numpy as np
import pytest

from fedmpi.selection import select_by_loss, select_random


def test_random_selection_is_sorted_unique_and_seeded():
    a = select_random(100, 10, np.random.default_rng(3))
    b = select_random(100, 10, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0)


def test_loss_selection_takes_largest_gap():
    last = np.array([0.5, 2.0, 1.0, 3.0, 0.1])
    chosen = select_by_loss(last, global_loss=0.7, num_selected=2, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(chosen, [1, 3])


def test_unseen_clients_come_first_and_every_client_is_visited():
    num_clients, k = 10, 2
    last = np.full(num_clients, np.inf)
    seen = []
    for r in range(num_clients // k):
        chosen = select_by_loss(last, 1.0, k, np.random.default_rng(r))
        seen += chosen.tolist()
        last[chosen] = 0.5  # trained: finite loss now
    assert sorted(seen) == list(range(num_clients))


def test_ties_break_by_the_seeded_permutation():
    last = np.full(6, np.inf)
    picks = {tuple(select_by_loss(last, 0.0, 2, np.random.default_rng(s))) for s in range(20)}
    assert len(picks) > 1  # not always the lowest ids
    assert select_by_loss(last, 0.0, 2, np.random.default_rng(7)).tolist() == select_by_loss(
        last, 0.0, 2, np.random.default_rng(7)
    ).tolist()


def test_nan_global_loss_ranks_by_client_loss():
    last = np.array([1.0, 3.0, 2.0])
    assert select_by_loss(last, float("nan"), 1, np.random.default_rng(0)).tolist() == [1]


def test_bad_counts():
    with pytest.raises(ValueError, match="cannot select"):
        select_random(3, 4, np.random.default_rng(0))


# --- the registry and cyclic selection --------------------------------------------------------

from fedmpi.config import ConfigError, load_config  # noqa: E402
from fedmpi.selection import SELECTIONS, SelectionInput, select, select_cyclic, sweep_orders  # noqa: E402


def _cyclic_rounds(num_clients: int, k: int, num_rounds: int, seed: int = 0) -> list[list[int]]:
    return [select_cyclic(num_clients, k, r, seed).tolist() for r in range(1, num_rounds + 1)]


@pytest.mark.parametrize("num_clients,k", [(12, 4), (10, 3), (7, 5), (5, 5), (9, 1), (6, 4)])
def test_cyclic_visits_every_client_once_per_sweep(num_clients, k):
    num_sweeps = 4
    rounds = _cyclic_rounds(num_clients, k, num_rounds=num_sweeps * num_clients // k)
    for chosen in rounds:
        assert len(chosen) == k and len(set(chosen)) == k  # no client twice in one round
    # Laid end to end, the rounds' picks cut into whole sweeps, each a permutation of all clients.
    orders = sweep_orders(num_clients, k, 0, num_sweeps)
    for order in orders:
        assert sorted(order.tolist()) == list(range(num_clients))
    # After t picks every client has been visited floor(t / C) or ceil(t / C) times.
    counts = np.zeros(num_clients, dtype=int)
    for r, chosen in enumerate(rounds, start=1):
        counts[chosen] += 1
        t = r * k
        assert counts.min() >= t // num_clients and counts.max() <= -(-t // num_clients)
    # The round picks are exactly the sweep orders' clients, position by position.
    flat = np.concatenate(orders)
    for r, chosen in enumerate(rounds):
        assert sorted(flat[r * k : (r + 1) * k].tolist()) == chosen


def test_cyclic_defers_a_client_the_straddling_round_already_has():
    # 3 clients, 2 per round: round 2 takes the last client of sweep 0 and the first of sweep 1.
    # Find a seed whose raw sweep 1 starts with the client that ended sweep 0.
    from fedmpi import seeding
    from fedmpi.selection import CYCLIC_SWEEP

    for seed in range(100):
        raw = [seeding.rng(seed, CYCLIC_SWEEP, s).permutation(3) for s in range(2)]
        if raw[1][0] == raw[0][2]:
            break
    else:
        pytest.fail("no seed with a clash in 100")
    orders = sweep_orders(3, 2, seed, 2)
    np.testing.assert_array_equal(orders[0], raw[0])
    # The clashing client moves one place later; the other two keep their order.
    np.testing.assert_array_equal(orders[1], [raw[1][1], raw[1][0], raw[1][2]])
    assert select_cyclic(3, 2, 2, seed).tolist() == sorted([raw[0][2], raw[1][1]])


def test_cyclic_is_seeded_and_differs_between_sweeps():
    assert _cyclic_rounds(20, 5, 8, seed=3) == _cyclic_rounds(20, 5, 8, seed=3)
    assert _cyclic_rounds(20, 5, 8, seed=3) != _cyclic_rounds(20, 5, 8, seed=4)
    orders = sweep_orders(20, 5, 3, 2)
    assert orders[0].tolist() != orders[1].tolist()


def test_registry_dispatches_by_name_and_matches_the_pure_rules():
    assert {"random", "loss", "cyclic"} <= set(SELECTIONS)
    last = np.array([0.5, 2.0, 1.0, 3.0, 0.1])
    state = SelectionInput(round=3, num_selected=2, last_loss=last, global_loss=0.7, seed=1)
    assert select("loss", state).tolist() == [1, 3]
    assert select("cyclic", state).tolist() == select_cyclic(5, 2, 3, 1).tolist()
    assert select("random", state).tolist() == select("random", state).tolist()
    with pytest.raises(ValueError, match="unknown server.selection 'greedy'"):
        select("greedy", state)


def test_config_accepts_registered_rules_only():
    assert load_config(overrides=["server.selection=cyclic"]).server.selection == "cyclic"
    with pytest.raises(ConfigError, match="server.selection: unknown selection rule 'greedy'"):
        load_config(overrides=["server.selection=greedy"])
