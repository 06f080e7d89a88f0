"""Server optimizers against steps computed by hand (two rounds), untouched elements, state round trip."""

from types import SimpleNamespace

import numpy as np
import pytest

from fedmpi.server_optim import OPTIMIZERS, Adagrad, Adam, AvgM, Sgd, Yogi, build_server_optimizer

X0 = np.array([1.0, -2.0], dtype=np.float32)
D1 = np.array([0.5, 0.1])
D2 = np.array([-0.2, 0.1])


def two_steps(opt, touched2=None):
    x1 = opt.step(X0, D1)
    return x1, opt.step(x1, D2, touched2)


def test_sgd_is_the_eta_step():
    x1, x2 = two_steps(Sgd(lr=0.5))
    np.testing.assert_allclose(x1, [1.25, -1.95], rtol=1e-7)
    np.testing.assert_allclose(x2, [1.15, -1.90], rtol=1e-7)


def test_avgm_two_rounds():
    x1, x2 = two_steps(AvgM(lr=0.5, momentum=0.9))
    # m1 = 0.5 -> x1 = 1.25; m2 = 0.45 - 0.2 = 0.25 -> x2 = 1.375
    np.testing.assert_allclose(x1[0], 1.25, rtol=1e-7)
    np.testing.assert_allclose(x2[0], 1.375, rtol=1e-7)


def test_adam_two_rounds_with_bias_correction():
    x1, x2 = two_steps(Adam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3))
    # round 1: m = 0.05, v = 0.0025; m^ = 0.05/0.1 = 0.5, v^ = 0.0025/0.01 = 0.25
    step1 = 0.1 * 0.5 / (0.5 + 1e-3)
    # round 2: m = 0.045 - 0.02 = 0.025, v = 0.002475 + 0.0004 = 0.002875
    # m^ = 0.025 / (1 - 0.81) = 0.025 / 0.19, v^ = 0.002875 / (1 - 0.9801) = 0.002875 / 0.0199
    step2 = 0.1 * (0.025 / 0.19) / (np.sqrt(0.002875 / 0.0199) + 1e-3)
    np.testing.assert_allclose(x1[0], np.float32(1.0 + step1), rtol=1e-7)
    np.testing.assert_allclose(x2[0], np.float32(np.float32(1.0 + step1) + step2), rtol=1e-7)


def test_adam_without_bias_correction_is_reddi_algorithm_2():
    x1, _ = two_steps(Adam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3, bias_correction=False))
    # v starts at tau^2 = 1e-6: v1 = 0.99e-6 + 0.0025; m1 = 0.05
    np.testing.assert_allclose(x1[0], np.float32(1.0 + 0.1 * 0.05 / (np.sqrt(0.99e-6 + 0.0025) + 1e-3)), rtol=1e-7)


def test_yogi_two_rounds():
    x1, x2 = two_steps(Yogi(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3))
    # round 1: v0 = 0 -> v1 = 0 - 0.01 * 0.25 * sign(0 - 0.25) = 0.0025 (as Adam)
    step1 = 0.1 * 0.5 / (0.5 + 1e-3)
    # round 2: v1 - 0.04 = -0.0375 < 0 -> v2 = 0.0025 + 0.01 * 0.04 = 0.0029 (Adam: 0.002875)
    step2 = 0.1 * (0.025 / 0.19) / (np.sqrt(0.0029 / 0.0199) + 1e-3)
    np.testing.assert_allclose(x1[0], np.float32(1.0 + step1), rtol=1e-7)
    np.testing.assert_allclose(x2[0], np.float32(np.float32(1.0 + step1) + step2), rtol=1e-7)


def test_adagrad_two_rounds():
    x1, x2 = two_steps(Adagrad(lr=0.1, beta1=0.9, tau=1e-3))
    # v0 = tau^2; v1 = 1e-6 + 0.25, m1 = 0.05; v2 = v1 + 0.04, m2 = 0.025
    step1 = 0.1 * 0.05 / (np.sqrt(1e-6 + 0.25) + 1e-3)
    step2 = 0.1 * 0.025 / (np.sqrt(1e-6 + 0.29) + 1e-3)
    np.testing.assert_allclose(x1[0], np.float32(1.0 + step1), rtol=1e-7)
    np.testing.assert_allclose(x2[0], np.float32(np.float32(1.0 + step1) + step2), rtol=1e-7)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_untouched_elements_keep_value_moments_and_step_count(name):
    hyper = SimpleNamespace(momentum=0.9, beta1=0.9, beta2=0.99, tau=1e-3, bias_correction=True)
    opt = build_server_optimizer(name, 0.1, hyper)
    x1 = opt.step(X0, D1)
    before = opt.state()
    x2 = opt.step(x1, D2, np.array([True, False]))
    after = opt.state()
    assert x2[1] == x1[1]
    assert x2[0] != x1[0]
    for key in after:
        assert after[key][1] == before[key][1], key
    assert after["steps"].tolist() == [2, 1]
    # The untouched element's next step uses t = 2, as if the skipped round never happened.
    fresh = build_server_optimizer(name, 0.1, hyper)
    y1 = fresh.step(X0, D1)
    y2 = fresh.step(y1, np.array([0.0, D2[1]]), np.array([False, True]))
    assert y2[1] == opt.step(x2, np.array([0.0, D2[1]]), np.array([False, True]))[1]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_round_trip_continues_bit_identically(name):
    hyper = SimpleNamespace(momentum=0.9, beta1=0.9, beta2=0.99, tau=1e-3, bias_correction=True)
    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=5) for _ in range(4)]
    a = build_server_optimizer(name, 0.05, hyper)
    x = np.zeros(5, dtype=np.float32)
    for d in deltas[:2]:
        x = a.step(x, d)
    b = build_server_optimizer(name, 0.05, hyper)
    b.load_state({k: v.copy() for k, v in a.state().items()})
    xa = xb = x
    for d in deltas[2:]:
        xa, xb = a.step(xa, d), b.step(xb, d)
    assert xa.tobytes() == xb.tobytes()


def test_errors_name_the_key():
    with pytest.raises(ValueError, match="server.optimizer"):
        build_server_optimizer("lamb", 0.1, SimpleNamespace())
    with pytest.raises(ValueError, match="server.beta2"):
        Adam(lr=0.1, beta2=1.0)
    with pytest.raises(ValueError, match="checkpoint holds"):
        Adam(lr=0.1).load_state({"momentum": np.zeros(2), "steps": np.zeros(2)})
