import numpy as np
import pytest

from fedmpi.lora_ranks import client_ranks


def test_client_ranks_follow_the_shares_and_the_seed():
    ranks = client_ranks(0, 4000, (2, 8), (0.25, 0.75))
    assert set(ranks.tolist()) == {2, 8}
    assert abs((ranks == 2).mean() - 0.25) < 0.03
    np.testing.assert_array_equal(ranks, client_ranks(0, 4000, (2, 8), (0.25, 0.75)))
    assert not np.array_equal(ranks, client_ranks(1, 4000, (2, 8), (0.25, 0.75)))
    np.testing.assert_array_equal(client_ranks(0, 10, (4,), (1.0,)), np.full(10, 4))


def test_bad_device_classes_are_errors():
    with pytest.raises(ValueError, match="one share per rank"):
        client_ranks(0, 5, (2, 4), (1.0,))
    with pytest.raises(ValueError, match="summing to 1"):
        client_ranks(0, 5, (2, 4), (0.5, 0.6))
