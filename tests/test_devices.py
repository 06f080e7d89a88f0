"""Device profiles: exact class shares, rank-independent draws, clear validation errors."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from fedmpi.devices import DeviceClass, DevicesConfig, assign_classes, class_counts, client_classes, profile_table


def test_class_counts_largest_remainder():
    # 10 clients at 0.55 / 0.25 / 0.2: floors 5, 2, 2; the one left goes to the largest fraction (0.5).
    assert class_counts(np.array([0.55, 0.25, 0.2]), 10).tolist() == [6, 2, 2]
    # Equal fractions go to the lower class id.
    assert class_counts(np.array([0.5, 0.5]), 3).tolist() == [2, 1]


def test_assignment_is_exact_seeded_and_per_client():
    classes = assign_classes(seed=3, num_clients=20, shares=np.array([0.25, 0.75]))
    assert np.bincount(classes).tolist() == [5, 15]
    assert np.array_equal(classes, assign_classes(3, 20, np.array([0.25, 0.75])))
    assert not np.array_equal(classes, assign_classes(4, 20, np.array([0.25, 0.75])))


def test_homogeneous_and_empty_profiles():
    one = DevicesConfig(classes=(DeviceClass(name="phone", memory_bytes=1e9),))
    assert client_classes(one, seed=0, num_clients=7).tolist() == [0] * 7
    assert client_classes(DevicesConfig(), seed=0, num_clients=7) is None
    table = profile_table(one, 7)
    assert table["name"].tolist() == ["phone"] and np.isnan(table["flops_per_round"][0])
    assert table["num_clients"].tolist() == [7] and table["share"].tolist() == [1.0]
    assert all(v.size == 0 for v in profile_table(DevicesConfig(), 7).values())


def test_validation_names_the_problem():
    with pytest.raises(ValidationError, match="shares must sum to 1"):
        DevicesConfig(classes=(DeviceClass(name="a", share=0.5), DeviceClass(name="b", share=0.3)))
    with pytest.raises(ValidationError, match="repeated: \\['a'\\]"):
        DevicesConfig(classes=(DeviceClass(name="a", share=0.5), DeviceClass(name="a", share=0.5)))
    with pytest.raises(ValidationError, match="memory_bytes"):
        DeviceClass(name="a", memory_bytes=-1)
    with pytest.raises(ValidationError, match="Extra inputs|extra"):
        DeviceClass(name="a", memory=1)
