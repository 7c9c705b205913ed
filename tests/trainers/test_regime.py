"""Issue 6: on the `smoke` preset, with real CIFAR-10, the FLOPs reduction grows with λ."""

import pytest

from trainers.config import load_config
from trainers.trial import run_trial


@pytest.mark.slow
def test_flops_reduction_grows_with_lambda_on_the_smoke_preset(cifar10_dir):
    config = load_config("smoke", {"data_dir": str(cifar10_dir)})
    lams = (3e-3, 2e-2, 4e-2)
    reductions = [run_trial(config, lam, t=1.2).flops_reduction for lam in lams]
    # Measured: 0.0, 0.65, 0.64 — a weak λ leaves every γ near γ₀ (no valley: nothing pruned), a
    # strong one polarizes them within the first epochs. Allow the plateau to wobble by 0.05.
    assert reductions[0] < 0.1
    assert reductions[1] > reductions[0] + 0.3
    assert reductions[2] >= reductions[1] - 0.05
