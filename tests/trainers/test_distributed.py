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
- ResNet-20 (the cpu-quick model, optimizer and schedule; λ 1e-3, t 1.2; random 16×16 images,
  global batch 64): 8 steps in float64 within 1e-10 - with two broken variants the tolerance
  catches - and the first step in float32 within 1e-6. Why not float32 beyond the first steps: in
  the test's docstring (and docs/cluster.md, "Data-parallel trials").
- a trial (smoke preset, real CIFAR-10), run for one epoch and resumed for a second by a new pair
  of workers: both replicas restore rank 0's checkpoint, rank 0's reported F is F of rank 0's γ
  recomputed here through the threshold and the FLOPs count, the other replica measured nothing,
  reported as often and holds the same weights.
- a final job on 2 workers: trained and fine-tuned data-parallel, rank 0's result handed back.
"""

from __future__ import annotations

import itertools
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
    every = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
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


RESNET_BATCH, RESNET_STEPS_PER_EPOCH, RESNET_EPOCHS = 64, 4, 2
FLOAT64_ATOL = 1e-10
FLOAT32_FIRST_STEP_ATOL = 1e-6
RESNET_LAM, RESNET_T = 1e-3, 1.2  # the cpu-quick regime (docs/cpu-regime.md)


class _Cast:
    """A training loader whose images are cast to `dtype` (the model runs in it), cut after `steps` batches."""

    def __init__(self, loader: TensorLoader, dtype: torch.dtype, steps: int | None = None) -> None:
        self.loader, self.dtype, self.steps = loader, dtype, steps

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        batches = ((x.to(self.dtype), y) for x, y in self.loader)
        return batches if self.steps is None else itertools.islice(batches, self.steps)


def _resnet_setup(dtype: torch.dtype) -> tuple[nn.Module, TensorLoader, list[torch.Tensor], object]:
    """The cpu-quick trial's start - ResNet-20, every γ at 0.5, its optimizer and schedule - on
    random 16×16 images (pad-2 crops, flips), in `dtype`."""
    from pruning.prunable import scaling_factors
    from pruning.regularizers import init_scaling_factors_
    from trainers import models

    torch.manual_seed(0)
    model = models.build("resnet20", 10).to(dtype)
    gammas = scaling_factors(model)
    init_scaling_factors_(gammas, 0.5)
    data = torch.Generator().manual_seed(1)
    n = RESNET_BATCH * RESNET_STEPS_PER_EPOCH
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=data, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=data)
    loader = TensorLoader(images, labels, ((0.5,) * 3, (0.25,) * 3), RESNET_BATCH, train=True, pad=2, seed=3)
    config = load_config("cpu-quick", {"epochs": RESNET_EPOCHS, "max_epochs": RESNET_EPOCHS, "min_epochs": 1})
    return model, loader, gammas, config


def _resnet_train(model: nn.Module, loader: TensorLoader, gammas: list[torch.Tensor], config, dtype: torch.dtype,
                  lam: float = RESNET_LAM, steps: int | None = None) -> list[dict]:  # fmt: skip
    """The run of `_resnet_setup`: every step of RESNET_EPOCHS epochs, or the first `steps` only."""
    optimizer = loop.make_optimizer(model, config, gammas=gammas)
    scheduler = loop.make_scheduler(optimizer, config.lr_schedule, RESNET_EPOCHS, len(loader))
    penalty = loop.make_penalty(config, lam, RESNET_T, len(loader))
    epochs = RESNET_EPOCHS if steps is None else 1
    return loop.train(model, _Cast(loader, dtype, steps), optimizer, scheduler, epochs=epochs, penalty=penalty,
                      gammas=gammas)  # fmt: skip


# The runs of the ResNet-20 test: (dtype, steps; None: all), each on 2 workers.
RESNET_VARIANTS = {"exact": ("float64", None), "per_replica_bn": ("float64", None),
                   "penalty_per_replica": ("float64", None), "float32_first_step": ("float32", 1)}  # fmt: skip


def _resnet_replica(cfg: dict) -> None:
    """One Ray Train worker: the ResNet-20 run in float64, the two broken variants the tolerance must
    catch - BN statistics of the replica's own 32 images, and λ·R(γ) counted once per replica (its
    gradient summed over the replicas instead of averaged) - and the first step in float32."""
    import ray.train

    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    global_forward = distributed.GlobalBatchNorm.forward
    for variant, (dtype_name, steps) in RESNET_VARIANTS.items():
        dtype = getattr(torch, dtype_name)
        model, loader, gammas, config = _resnet_setup(dtype)
        distributed.shard(loader)
        lam = RESNET_LAM * (2 if variant == "penalty_per_replica" else 1)
        if variant == "per_replica_bn":
            distributed.GlobalBatchNorm.forward = lambda self, x: self.bn(x)
        try:
            history = _resnet_train(model, loader, gammas, config, dtype, lam, steps)
        finally:
            distributed.GlobalBatchNorm.forward = global_forward
        torch.save({"state": model.state_dict(), "history": history}, Path(cfg["out"]) / f"{variant}{rank}.pt")


@pytest.mark.slow
def test_resnet20_two_gloo_workers_equal_one_worker_in_float64(local_ray, tmp_path):
    """ResNet-20, 8 steps (2 epochs of 4) on 2 workers against 1 with the same global batch.

    float64: every tensor of the state (weights, γ, β, running statistics) within FLOAT64_ATOL =
    1e-10; measured 3.0e-15 (γ 8.9e-16). The same workers run two broken variants, which land 1e8
    times further off: BN statistics of each replica's 32 images (max |Δ| 2.8e-2) and λ·R(γ) counted
    once per replica, i.e. its gradient summed, not averaged (3.9e-3).
    float32: the first step only, within FLOAT32_FIRST_STEP_ATOL = 1e-6; measured 1.2e-7 (a running
    variance), γ 6.0e-8 - one ulp at 0.5. This is the check of the float32 casts in GlobalBatchNorm.
    (No ReLU unit flips in that step here - see below; with other data or kernels one could, and
    this check would then fail for no fault of the code.)

    Why not float32 for longer: 2 workers add the same numbers as 1 in another order (half-batch
    gradients all-reduced, BN sums of partial sums), a rounding difference of ~1e-7, and ResNet-20's
    ReLUs turn that into a real one. Once a unit's pre-activation lies within that 1e-7 of 0, it is
    on in one run and off in the other, and its gradient is passed in one run only - a jump that
    does not shrink with the perturbation. On cpu-quick data (bench/ddp_drift.py), max |Δ| after
    steps 1, 2, 3, 4, 5, 15: 1e-7, 1e-7, 5e-5, 5e-4, 2e-3, 0.2, the first flipped units appearing in
    step 3; one process diverges from itself just as fast when only its batch order is reversed or
    one weight is nudged by one ulp (6e-5 / 5e-5 after step 3), with or without the regularizer,
    and with SiLU in place of ReLU it does not (1e-6 after 15 steps). In float64 the rounding is
    1e-16, no unit flips in these steps and the difference grows at the smooth rate only (8e-16
    after one step, 7e-13 after 15): float64 is where the code's exactness can be tested.
    """
    model, loader, gammas, config = _resnet_setup(torch.float64)
    truth = _resnet_train(model, loader, gammas, config, torch.float64)
    _fit(_resnet_replica, {"out": str(tmp_path)}, tmp_path)
    runs = {v: [torch.load(tmp_path / f"{v}{r}.pt") for r in (0, 1)] for v in RESNET_VARIANTS}
    gamma_diff, every_diff = _max_differences(runs["exact"][0]["state"], model.state_dict())
    broken = {v: _max_differences(runs[v][0]["state"], model.state_dict()) for v in ("per_replica_bn", "penalty_per_replica")}
    print(f"ResNet-20 float64, 2 workers vs 1 after {RESNET_STEPS_PER_EPOCH * RESNET_EPOCHS} steps: "
          f"max |Δγ| = {gamma_diff:.1e}, max |Δ| = {every_diff:.1e} (tolerance {FLOAT64_ATOL}); broken: "
          + ", ".join(f"{v} max |Δγ| = {g:.1e}, max |Δ| = {e:.1e}" for v, (g, e) in broken.items()))
    assert every_diff <= FLOAT64_ATOL and gamma_diff <= FLOAT64_ATOL
    assert _max_differences(runs["exact"][0]["state"], runs["exact"][1]["state"]) == (0.0, 0.0)
    assert max(abs(g.detach() - 0.5).max().item() for g in gammas) > 1e-3  # γ moved
    for one, two in zip(truth, runs["exact"][0]["history"], strict=True):  # the loop sums epoch stats in float32
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
        assert two["penalty"] == pytest.approx(one["penalty"], rel=1e-6)
    for variant, (_, every) in broken.items():
        assert every > 1e4 * FLOAT64_ATOL, variant

    model, loader, gammas, config = _resnet_setup(torch.float32)
    _resnet_train(model, loader, gammas, config, torch.float32, steps=1)
    first = _max_differences(runs["float32_first_step"][0]["state"], model.state_dict())
    print(f"ResNet-20 float32, 2 workers vs 1 after one step: max |Δγ| = {first[0]:.1e}, max |Δ| = {first[1]:.1e} "
          f"(tolerance {FLOAT32_FIRST_STEP_ATOL})")
    assert max(first) <= FLOAT32_FIRST_STEP_ATOL


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
