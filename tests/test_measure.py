"""Client-round measurement: saved activations shrink under a no-grad prefix; seconds and RSS are recorded."""

from __future__ import annotations

import torch
from torch import nn

from fedmpi.measure import ClientRoundMeter, resident_bytes


class _Stack(nn.Module):
    """Four Linear+GELU blocks; the first ``frozen_prefix`` run under no_grad."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(64, 64), nn.GELU()) for _ in range(4)])
        self.frozen_prefix = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for block in self.blocks[: self.frozen_prefix]:
                x = block(x)
        for block in self.blocks[self.frozen_prefix :]:
            x = block(x)
        return x


def test_saved_activations_exclude_the_no_grad_prefix_and_parameters():
    model = _Stack()
    measured = {}
    for prefix in (0, 3):
        model.frozen_prefix = prefix
        with ClientRoundMeter(model, torch.device("cpu")) as meter:
            for _ in range(2):
                model(torch.randn(32, 64)).sum().backward()
        measured[prefix] = meter.usage
    # Each Linear saves its input (32x64 fp32 = 8 KiB); each GELU saves its input (8 KiB): 2 per block.
    assert measured[0].saved_activation_bytes == 4 * 2 * 32 * 64 * 4
    assert measured[3].saved_activation_bytes == 1 * 2 * 32 * 64 * 4
    assert measured[0].memory_source == "cpu_peak_rss" and measured[0].peak_memory_bytes >= resident_bytes() * 0.5
    assert measured[0].seconds > 0


def test_frozen_prefix_of_a_transformer_keeps_no_activations():
    from fedmpi.models.blocks import train_last_blocks
    from fedmpi.models.build import _load_backbone

    tokenizer, model, _ = _load_backbone("tiny-bert", kind="classification", num_labels=3, seed=0)
    model.eval()  # no dropout masks: the same tensors are saved on every call
    batch = dict(tokenizer(["a first short text", "another text here"], return_tensors="pt", padding=True))
    batch["labels"] = torch.tensor([0, 1])
    saved = []
    for n in (0, 1, 2):
        train_last_blocks(model, n, ["classifier"])
        with ClientRoundMeter(model, torch.device("cpu")) as meter:
            model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        saved.append(meter.usage.saved_activation_bytes)
    # The two blocks have the same shapes: each trained block adds the same bytes, the frozen ones none.
    assert 0 < saved[0] < saved[1] - saved[0] and saved[2] - saved[1] == saved[1] - saved[0]
