"""Server optimizers: how the server steps the global vector along the clients' combined update.

Reddi et al. 2021, "Adaptive Federated Optimization" (Algorithm 2): the strategy combines
the clients' deltas (Eq. 5 or Eq. 8 at eta = 1) into ``delta`` = combined - current, the
negative pseudo-gradient g = -delta, and a server optimizer steps on it:

- ``sgd``     x <- x + eta * delta                         (today's Eq. 5 / Eq. 8 step)
- ``avgm``    m <- momentum * m + delta;  x <- x + eta * m (FedAvgM, Hsu et al. 2019)
- ``adagrad`` v <- v + delta^2
- ``adam``    v <- beta2 * v + (1 - beta2) * delta^2
- ``yogi``    v <- v - (1 - beta2) * delta^2 * sign(v - delta^2)
  and for these three m <- beta1 * m + (1 - beta1) * delta;  x <- x + eta * m / (sqrt(v) + tau).

Bias correction (adam, yogi; ``bias_correction=True``, the default): Kingma and Ba's
m / (1 - beta1^t) and v / (1 - beta2^t) with m and v starting at 0, as Flower's FedAdam does.
``bias_correction=False`` is Reddi's Algorithm 2 verbatim: no correction, v starts at tau^2.
Adagrad is never corrected and starts at v = tau^2.

Elements no client sent this round (a head every client pruned) have no pseudo-gradient:
the ``touched`` mask marks them False, and neither their value nor their moments nor their
step count move (momentum does not carry an untouched head). ``t`` is counted per element.
State is float64 moments plus int64 step counts, exported by ``state()`` for the checkpoint.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ServerOptimizer:
    """Base: the shared step bookkeeping; subclasses define ``_direction``."""

    name = ""
    slots: tuple[str, ...] = ()  # names of the float64 state vectors

    def __init__(self, lr: float) -> None:
        if lr <= 0:
            raise ValueError(f"server.lr must be > 0, got {lr}")
        self.lr = lr
        self._state: dict[str, np.ndarray] = {}

    def _init_slots(self, numel: int) -> None:
        self._state = {slot: np.zeros(numel, dtype=np.float64) for slot in self.slots}
        self._state["steps"] = np.zeros(numel, dtype=np.int64)

    def step(self, params: np.ndarray, delta: np.ndarray, touched: np.ndarray | None = None) -> np.ndarray:
        """The next global vector (float32) from ``delta`` = combined - current; ``touched`` = sent by some client."""
        if params.shape != delta.shape:
            raise ValueError(f"server optimizer: params {params.shape} and delta {delta.shape} differ")
        if not self._state:
            self._init_slots(params.shape[0])
        elif self._state["steps"].shape != params.shape:
            raise ValueError(f"server optimizer state has {self._state['steps'].shape[0]} elements, params {params.shape[0]}")
        touched = np.ones(params.shape, dtype=bool) if touched is None else np.asarray(touched, dtype=bool)
        d = delta[touched].astype(np.float64)
        self._state["steps"][touched] += 1
        move = self._direction(d, touched)
        out = params.astype(np.float64)
        out[touched] += self.lr * move
        return out.astype(np.float32)

    def _direction(self, delta: np.ndarray, touched: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def from_config(cls, lr: float, hyper: object) -> ServerOptimizer:
        return cls(lr)

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the state vectors (empty before the first step)."""
        return {k: v.copy() for k, v in self._state.items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            self._state = {}
            return
        expected = {*self.slots, "steps"}
        if set(state) != expected:
            raise ValueError(f"server.optimizer={self.name}: checkpoint holds {sorted(state)}, expected {sorted(expected)}")
        self._state = {k: np.array(v, dtype=np.int64 if k == "steps" else np.float64) for k, v in state.items()}


class Sgd(ServerOptimizer):
    name = "sgd"

    def _direction(self, delta: np.ndarray, touched: np.ndarray) -> np.ndarray:
        return delta


class AvgM(ServerOptimizer):
    name = "avgm"
    slots = ("momentum",)

    def __init__(self, lr: float, momentum: float = 0.9) -> None:
        super().__init__(lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"server.momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    @classmethod
    def from_config(cls, lr: float, hyper: object) -> ServerOptimizer:
        h: Any = hyper
        return cls(lr, momentum=h.momentum)

    def _direction(self, delta: np.ndarray, touched: np.ndarray) -> np.ndarray:
        m = self._state["momentum"]
        m[touched] = self.momentum * m[touched] + delta
        return m[touched]


class _Adaptive(ServerOptimizer):
    """m / (sqrt(v) + tau) with a first moment m and a second moment v (Adagrad, Adam, Yogi)."""

    slots = ("m", "v")
    corrects_bias = False

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, bias_correction: bool = True) -> None:
        super().__init__(lr)
        for key, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= value < 1:
                raise ValueError(f"server.{key} must be in [0, 1), got {value}")
        if tau <= 0:
            raise ValueError(f"server.tau must be > 0, got {tau}")
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.bias_correction = bias_correction and self.corrects_bias

    @classmethod
    def from_config(cls, lr: float, hyper: object) -> ServerOptimizer:
        h: Any = hyper
        return cls(lr, beta1=h.beta1, beta2=h.beta2, tau=h.tau, bias_correction=h.bias_correction)

    def _init_slots(self, numel: int) -> None:
        super()._init_slots(numel)
        if not self.bias_correction:
            self._state["v"][:] = self.tau**2  # Reddi's v_{-1} >= tau^2

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _direction(self, delta: np.ndarray, touched: np.ndarray) -> np.ndarray:
        m, v = self._state["m"], self._state["v"]
        m[touched] = self.beta1 * m[touched] + (1 - self.beta1) * delta
        v[touched] = self._second_moment(v[touched], delta)
        m_t, v_t = m[touched], v[touched]
        if self.bias_correction:
            t = self._state["steps"][touched].astype(np.float64)
            m_t = m_t / (1 - self.beta1**t)
            v_t = v_t / (1 - self.beta2**t)
        return m_t / (np.sqrt(v_t) + self.tau)


class Adagrad(_Adaptive):
    name = "adagrad"

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return v + delta**2


class Adam(_Adaptive):
    name = "adam"
    corrects_bias = True

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * delta**2


class Yogi(_Adaptive):
    name = "yogi"
    corrects_bias = True

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        sq = delta**2
        return v - (1 - self.beta2) * sq * np.sign(v - sq)


OPTIMIZERS: dict[str, type[ServerOptimizer]] = {cls.name: cls for cls in (Sgd, AvgM, Adagrad, Adam, Yogi)}


def build_server_optimizer(name: str, lr: float, hyper: object) -> ServerOptimizer:
    """The optimizer ``name``; ``hyper`` carries momentum, beta1, beta2, tau, bias_correction."""
    if name not in OPTIMIZERS:
        raise ValueError(f"server.optimizer: unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name].from_config(lr, hyper)
