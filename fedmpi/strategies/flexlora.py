"""FlexLoRA (Bai et al. 2024): heterogeneous ranks; the exact mean of the clients' products, cut by SVD.

Clients get, train (at their own scaling s_c = alpha / r_c) and upload their first r_c ranks as
in HetLoRA. The server forms sum_c p_c s_c B_c A_c at full size per module (platform.md section 5)
and keeps its best rank-``peft.lora.rank`` factors, read at s = alpha / peft.lora.rank (truncated
SVD, singular values split evenly between B and A: ``fedmpi/lora_rules.py``). The SVD is nested,
so a client's first r_c ranks, with B times r_c / r_max for its scaling (``client_view``), are the
best rank-r_c fit.
"""

from __future__ import annotations

import numpy as np

from fedmpi.config import FlexLoraConfig
from fedmpi.payload import ClientUpdate
from fedmpi.strategies import lora_combine
from fedmpi.strategies.hetlora import RankedLora


class FlexLora(RankedLora):
    name = "flexlora"
    cfg: FlexLoraConfig

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        combined = lora_combine.flexlora(params, self.factors, self.deltas(updates), self.client_weights(updates), self.ranks_of(updates))
        return self.eta_step(params, combined, server_lr)
