"""The final job on real data (the smoke preset): its exported pruned model has the FLOPs and the
accuracy it reports, loaded with torch.export alone."""

import json

import pytest
import torch

from pruning.flops import count_flops
from trainers import models
from trainers.config import load_config, preset_section
from trainers.final import EXPORT_NAME, run_final
from trainers.loop import evaluate
from trainers.trial import load_splits

SMOKE_LAM = preset_section("smoke")["lam_high"]  # large enough that the smoke trials prune


@pytest.fixture(scope="module")
def final(cifar10_dir, tmp_path_factory):
    config = load_config("smoke", {"data_dir": str(cifar10_dir)})
    splits = load_splits(config, torch.device("cpu"))
    output = tmp_path_factory.mktemp("final")
    reported = []
    result = run_final(config, SMOKE_LAM, 1.2, output, report=reported.append, splits=splits)
    return config, splits, output, result, reported


def test_the_exported_model_has_the_reported_flops_and_accuracy(final):
    config, splits, output, result, _ = final
    assert result.model_path == output / EXPORT_NAME and result.model_path.is_file()
    loaded = torch.export.load(result.model_path).module()
    shape = splits.input_shape

    assert count_flops(loaded, shape) == result.flops_after
    assert count_flops(models.build(config.model, splits.num_classes), shape) == result.flops_before
    assert result.flops_reduction == pytest.approx(1 - result.flops_after / result.flops_before)
    assert 0.3 < result.flops_reduction < 1.0  # the smoke preset's λ_high prunes
    assert result.params_after < result.params_before

    accuracy, _ = evaluate(loaded, splits.test)
    assert accuracy == pytest.approx(result.acc_after_finetune, abs=1e-3)
    assert accuracy > 0.15  # chance is 0.1
    one = loaded(next(iter(splits.test))[0][:1])  # any batch size
    assert one.shape == (1, splits.num_classes)
    program = torch.export.load(result.model_path)  # exported as deployed: BN folded into the convs
    assert not any("batch_norm" in str(node.target) for node in program.graph.nodes)


def test_the_summary_and_the_reports(final):
    config, splits, output, result, reported = final
    summary = json.loads((output / "final.json").read_text())
    for key in ("acc_before_pruning", "acc_after_pruning", "acc_after_finetune", "flops_before", "flops_after",
                "flops_reduction", "params_before", "params_after", "threshold"):  # fmt: skip
        assert summary[key] == getattr(result, key), key
    assert summary["config"] == config.to_dict() and summary["lam"] == SMOKE_LAM
    assert set(result.latency_ms_before) == set(result.latency_ms_after) == {1, config.eval_batch_size}
    assert all(ms > 0 for ms in [*result.latency_ms_before.values(), *result.latency_ms_after.values()])
    assert summary["ideal_speedup"] == pytest.approx(1 / (1 - result.flops_reduction))
    for batch in (1, config.eval_batch_size):
        want = result.latency_ms_before[batch] / result.latency_ms_after[batch]
        assert summary["speedup"][str(batch)] == pytest.approx(want)
    metrics = result.metrics()
    assert metrics["ideal_speedup"] == summary["ideal_speedup"]
    assert metrics[f"speedup_b{config.eval_batch_size}"] == pytest.approx(result.speedup[config.eval_batch_size])
    assert [r["phase"] for r in reported] == ["train"] * config.epochs + ["finetune"] * config.finetune_epochs
    assert reported == result.history
    assert (output / "pruned_state_dict.pt").is_file() and (output / "model.pt").is_file()
    assert tuple(result.example_input.shape[1:]) == tuple(splits.input_shape)
