"""The LoRA factor map: A and B found in the flat vector (BERT Linear, GPT-2 Conv1D), rank and factor groups."""

import numpy as np
import pytest
import torch

from fedmpi.lora_rules import lora_delta
from fedmpi.models import build_model
from fedmpi.peft_methods import Lora
from fedmpi.models.lora_factors import factor_groups, factor_mask, lora_factors, rank_groups, rank_mask


@pytest.fixture(scope="module", params=["tiny-bert", "tiny-gpt2"])
def bundle(request):
    return build_model(request.param, kind="classification", num_labels=3, method=Lora(rank=4, alpha=6), seed=0)


def test_factors_are_the_model_s_lora_weights(bundle):
    model, layout = bundle.model, bundle.layout
    flat = layout.get_flat(model).numpy()
    factors = lora_factors(model, layout)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    gpt2 = "gpt2" in type(model.get_base_model()).__name__.lower()
    assert len(factors) == (2 if gpt2 else 6)  # c_attn per layer; q, k, v per layer
    for f in factors:
        a, b = f.split(flat)
        np.testing.assert_array_equal(a, params[f"{f.module}.lora_A.default.weight"].detach().numpy())
        np.testing.assert_array_equal(b, params[f"{f.module}.lora_B.default.weight"].detach().numpy())
        assert f.scaling == 6 / 4 and f.fan_in_fan_out == gpt2
        # The orientation helper gives peft's own delta in the frozen weight's layout.
        layer = modules[f.module]
        with torch.no_grad():
            layer.lora_B["default"].weight.normal_()
        a, b = f.split(layout.get_flat(model).numpy())
        expected = layer.get_delta_weight("default").detach().numpy()
        assert expected.shape == tuple(params[f.base_weight].shape)
        np.testing.assert_allclose(lora_delta(b, a, f.scaling, f.fan_in_fan_out), expected, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            layer.lora_B["default"].weight.zero_()


def test_rank_groups_own_a_row_and_a_column(bundle):
    factors = lora_factors(bundle.model, bundle.layout)
    groups = rank_groups(factors, bundle.layout.numel)
    assert groups.num_groups == 4 * len(factors)
    f = factors[1]
    marker = np.zeros(bundle.layout.numel, dtype=np.float32)
    marker[groups.element_mask(np.arange(groups.num_groups) == 4 + 2)] = 1.0  # module 1, rank 2
    a, b = f.split(marker)
    assert a[2].all() and a.sum() == f.d_in and b[:, 2].all() and b.sum() == f.d_out
    assert rank_mask(factors, 2).reshape(len(factors), 4).tolist() == [[True, True, False, False]] * len(factors)
    task_head = bundle.layout.element_task_head_mask()
    assert np.all(groups.group_index[task_head] == -1)


def test_factor_groups_split_a_from_b(bundle):
    factors = lora_factors(bundle.model, bundle.layout)
    groups = factor_groups(factors, bundle.layout.numel)
    only_b = groups.element_mask(factor_mask(factors, "B"))
    for f in factors:
        assert not only_b[f.a].any() and only_b[f.b].all()
    assert only_b[bundle.layout.element_task_head_mask()].all()  # the task head belongs to no group
    with pytest.raises(ValueError, match="'A' or 'B'"):
        factor_mask(factors, "C")
