"""Data-parallel training (trainers.distributed) against single-process truths.

The sharding test is plain tensors. The others start 2 real gloo workers through Ray Train's
TorchTrainer on a local Ray (2 CPUs, 1 thread each) and compare with a run in this process:

- equivalence: 8 steps of Eq. 1 (cross-entropy + λ·R(γ), clamp) of a small BN network on random
  images, 2 workers × 16 images against 1 worker × 32 (the same global batch, seed, permutation
  and - since a replica augments its slice with the whole batch's draws - the same crops and
  flips). Weights, γ and BN running statistics agree within ATOL = 1e-6 (float32): the two runs
  add the same numbers in another order (the 32-image sums split 16 + 16 and all-reduced, the
  BN statistics from all-reduced sums), a few float32 ulps (1.2e-7 relative) per operation that
  8 steps of SGD with momentum carry into weights of order 1; measured here: γ bit-identical,
  every tensor within 6e-8. The negative control: per-replica BN statistics (16
  images each) differ by more than 10 × ATOL (`test_the_tolerance_catches_...`).
- a trial (smoke preset, real CIFAR-10), run for one epoch and resumed for a second by a new pair
  of workers: both replicas restore rank 0's checkpoint, rank 0's reported F is F of rank 0's γ
  recomputed here through the threshold and the FLOPs count, the other replica measured nothing,
  reported as often and holds the same weights.
- a final job on 2 workers: trained and fine-tuned data-parallel, rank 0's result handed back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from trainers import distributed, loop
from trainers.config import load_config
from trainers.data.loaders import TensorLoader

ATOL = 1e-6
STEPS_PER_EPOCH, EPOCHS, BATCH = 4, 2, 32


def _setup(seed: int = 0) -> tuple[nn.Module, TensorLoader, list[torch.Tensor], tuple]:
    """A conv-BN network (BN γ at 0.5, §3.2) and a training loader of random images (pad-2 crops, flips)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))  # fmt: skip
    gammas = [m.weight for m in model if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for g in gammas:
            g.fill_(0.5)
    data = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (BATCH * STEPS_PER_EPOCH, 3, 8, 8), generator=data, dtype=torch.uint8)
    labels = torch.randint(0, 4, (BATCH * STEPS_PER_EPOCH,), generator=data)
    loader = TensorLoader(images, labels, ((0.5,) * 3, (0.25,) * 3), BATCH, train=True, pad=2, seed=3)
    config = load_config(None, {"lr": 0.05, "epochs": EPOCHS, "max_epochs": 1, "min_epochs": 1})
    return model, loader, gammas, config


def _train(model: nn.Module, loader: TensorLoader, gammas: list[torch.Tensor], config) -> list[dict]:
    optimizer = loop.make_optimizer(model, config, gammas=gammas)
    scheduler = loop.make_scheduler(optimizer, config.lr_schedule, EPOCHS, len(loader))
    penalty = loop.make_penalty(config, 0.05, 1.2, len(loader))
    return loop.train(model, loader, optimizer, scheduler, epochs=EPOCHS, penalty=penalty, gammas=gammas)


def _replica(cfg: dict) -> None:
    """One Ray Train worker: the same run on its shard; its state written for the test to read."""
    import ray.train

    torch.set_num_threads(1)
    if cfg.get("per_replica_bn"):  # the negative control: BN statistics of each replica's 16 images
        distributed.GlobalBatchNorm.forward = lambda self, x: self.bn(x)
    model, loader, gammas, config = _setup()
    distributed.shard(loader)
    history = _train(model, loader, gammas, config)
    rank = ray.train.get_context().get_world_rank()
    torch.save({"state": model.state_dict(), "history": history}, Path(cfg["out"]) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs; the test module is shipped to its workers by value."""
    import ray.cloudpickle

    from search.ray_cluster import ray_session

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with ray_session(num_cpus=2) as info:
        yield info
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _fit(fn, cfg: dict, tmp_path: Path, workers: int = 2) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    run = ray.train.RunConfig(name="ddp", storage_path=str(tmp_path / "ray"),
                              failure_config=ray.train.FailureConfig(max_failures=0))  # fmt: skip
    scaling = ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1})
    TorchTrainer(fn, train_loop_config=cfg, scaling_config=scaling, run_config=run).fit()


def _max_differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(max |Δ| over the γ of the BNs, max |Δ| over every float tensor of the state)."""
    gamma = max((a[k] - b[k]).abs().max().item() for k in a if k.endswith(".weight") and a[k].dim() == 1)
    every = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    return gamma, every


def test_replicas_together_draw_one_workers_batches():
    _, whole, _, _ = _setup()
    parts = [_setup()[1] for _ in range(2)]
    for rank, part in enumerate(parts):
        distributed.shard(part, rank, 2)
    for epoch in (0, 1):
        for loader in (whole, *parts):
            loader.set_epoch(epoch)
        for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts, strict=True):
            torch.testing.assert_close(torch.cat([x0, x1]), x, rtol=0, atol=0)
            assert torch.equal(torch.cat([y0, y1]), y)
    with pytest.raises(ValueError, match="split evenly"):
        _setup()[1].shard(0, 3)


@pytest.mark.slow
def test_two_gloo_workers_equal_one_worker_with_the_same_global_batch(local_ray, tmp_path):
    model, loader, gammas, config = _setup()
    truth = _train(model, loader, gammas, config)
    _fit(_replica, {"out": str(tmp_path)}, tmp_path)
    runs = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    gamma_diff, weight_diff = _max_differences(runs[0]["state"], model.state_dict())
    print(f"2 workers vs 1: max |Δγ| = {gamma_diff:.2e}, max |Δ| of every tensor = {weight_diff:.2e} (ATOL {ATOL})")
    assert weight_diff <= ATOL and gamma_diff <= ATOL
    assert _max_differences(runs[0]["state"], runs[1]["state"]) == (0.0, 0.0)  # replicas stay identical
    assert max(abs(g.detach() - 0.5).max().item() for g in gammas) > 10 * ATOL  # γ moved: the check means something
    for replica in runs:
        for one, two in zip(truth, replica["history"], strict=True):
            assert two["workers"] == 2 and one["workers"] == 1
            assert two["loss"] == pytest.approx(one["loss"], abs=ATOL)
            assert two["penalty"] == pytest.approx(one["penalty"], abs=ATOL)
            assert two["train_accuracy"] == pytest.approx(one["train_accuracy"])  # all images counted once


@pytest.mark.slow
def test_the_tolerance_catches_per_replica_bn_statistics(local_ray, tmp_path):
    model, loader, gammas, config = _setup()
    _train(model, loader, gammas, config)
    _fit(_replica, {"out": str(tmp_path), "per_replica_bn": True}, tmp_path)
    difference = _max_differences(torch.load(tmp_path / "rank0.pt")["state"], model.state_dict())[1]
    print(f"per-replica BN statistics vs 1 worker: max |Δ| = {difference:.2e}")
    assert difference > 10 * ATOL


def _trial_replica(cfg: dict) -> None:
    """One replica of a trial on its shard, resuming from (and writing to) cfg["checkpoint"]."""
    import ray.train

    from trainers.trial import load_splits, run_trial

    config = cfg["config"]
    splits = load_splits(config, torch.device("cpu"))
    distributed.shard(splits.train)
    reports: list[dict] = []
    result = run_trial(config, 0.02, 1.2, report=reports.append, checkpoint_dir=cfg["checkpoint"], splits=splits)
    rank = ray.train.get_context().get_world_rank()
    torch.save({"status": result.status, "state": result.model_state, "reports": reports, "message": result.message},
               Path(cfg["out"]) / f"trial{rank}.pt")  # fmt: skip


@pytest.mark.slow
def test_a_resumed_two_worker_trial_reports_rank_zeros_f(local_ray, cifar10_dir, tmp_path):
    """Epoch 1 on 2 workers; a new 2-worker run resumes both replicas from rank 0's checkpoint for
    epoch 2. Its F is F of rank 0's γ through the threshold and FLOPs count; the replicas are equal."""
    from pruning.prunable import prunable_bns
    from trainers import models
    from trainers.pruning_rule import choose, reference_flops

    overrides = {"data_dir": str(cifar10_dir), "workers_per_trial": 2, "max_epochs": 1, "min_epochs": 1,
                 "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    checkpoint = tmp_path / "checkpoint"
    for max_epochs in (1, 2):  # max_epochs does not change the trajectory: the second run resumes the first
        config = load_config("smoke", {**overrides, "max_epochs": max_epochs})
        _fit(_trial_replica, {"config": config, "out": str(tmp_path), "checkpoint": str(checkpoint)}, tmp_path)
    lead, other = (torch.load(tmp_path / f"trial{r}.pt", weights_only=False) for r in (0, 1))
    assert lead["message"] == other["message"] == "resumed from epoch 1"  # every replica restored
    assert other["status"] == "replica"
    assert [r["epoch"] for r in lead["reports"]] == [r["epoch"] for r in other["reports"]] == [2]
    assert _max_differences(lead["state"], other["state"]) == (0.0, 0.0)  # optimizer state restored on both

    last = lead["reports"][-1]
    assert last["workers"] == 2 and last["images_per_s"] > 0
    model = models.build(config.model, 10)
    model.load_state_dict(lead["state"])
    shape = (3, 8, 8)  # the smoke preset: CIFAR-10 pooled to 8×8
    choice = choose(model, prunable_bns(model, config.prunable_set), config, shape,
                    reference_flops(config, model, shape, 10))  # fmt: skip
    assert (choice.flops_reduction, choice.summary) == (last["flops_reduction"], last["threshold"])


@pytest.mark.slow
def test_a_two_worker_final_job_hands_back_rank_zeros_result(local_ray, cifar10_dir, tmp_path):
    from search.train_workers import fit_final

    config = load_config("smoke", {"data_dir": str(cifar10_dir), "final_workers": 2, "epochs": 2, "max_epochs": 2,
                                   "min_epochs": 2, "cache_dir": str(tmp_path / "cache")})  # fmt: skip
    result = fit_final(config, 0.02, 1.2, str(tmp_path / "final"), {"cpu": 2, "gpu": 0},
                       storage_path=str(tmp_path / "ray"))  # fmt: skip
    assert [h["phase"] for h in result.history] == ["train", "train", "finetune"]
    assert all(h["workers"] == 2 for h in result.history)  # trained and fine-tuned data-parallel
    summary = json.loads((tmp_path / "final" / "final.json").read_text())  # written once, by rank 0
    assert summary["flops_after"] == result.flops_after and 0 <= result.flops_reduction < 1
    exported = torch.export.load(tmp_path / "final" / "pruned_model.pt2").module()
    x = result.example_input
    torch.testing.assert_close(exported(x), result.pruned_model.eval()(x), rtol=1e-4, atol=1e-4)
