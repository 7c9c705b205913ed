"""Data-parallel trials and final jobs: a Ray Train `TorchTrainer` of W workers running the same
`run_trial` / `run_final` as DDP replicas (`trainers.distributed` says what stays exact).

A trial with `workers_per_trial` > 1 is a Ray Train run launched from inside its Tune trial, Tune's
documented way (Ray Train V2, "Hyperparameter Tuning with Ray Tune"): the Tune trial is only the
driver (it holds a token CPU), the W workers each hold their share of the trial's resources, and
rank 0's reports reach Tune through `TuneReportCallback`, so the search, its early decisions and
MLflow see one trial as before. The Train run is named after the Tune trial and stored in its
folder: a restarted trial resumes the same run, and every worker restores rank 0's checkpoint.
A worker that dies fails the trial (Train's `max_failures=0`) with the error as its message: the
strategy is told a failed trial and the search goes on. The final job with `final_workers` > 1 is
likewise a Train run; rank 0 hands its result back in a checkpoint.

One worker never comes here: a trial is one Tune function, the final job one Ray task.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray import tune
from ray.train.torch import TorchTrainer

DRIVER_CPU = 0.01  # the Tune trial of a data-parallel trial only waits on its workers
_RESULT = "final_result.pt"


def worker_share(resources: dict[str, float], workers: int) -> dict[str, float]:
    """Each worker's part of a trial's (or the final job's) resources: {"CPU": .., "GPU": ..}."""
    cpu = max(float(resources.get("cpu", 1)) - DRIVER_CPU, 0.0) / workers
    return {"CPU": max(cpu, 0.01), "GPU": float(resources.get("gpu", 0)) / workers}


def _trainer(fn: Any, loop_config: dict[str, Any], workers: int, share: dict[str, float],
             run: ray.train.RunConfig) -> TorchTrainer:  # fmt: skip
    scaling = ray.train.ScalingConfig(num_workers=workers, use_gpu=share["GPU"] > 0,
                                      resources_per_worker={k: v for k, v in share.items() if v > 0})  # fmt: skip
    return TorchTrainer(fn, train_loop_config=loop_config, scaling_config=scaling, run_config=run)


def _replica_config(base: Any) -> Any:
    """The worker's Config: its own device (Ray Train's pick among the GPUs it was given), else as set."""
    device = ray.train.torch.get_device()
    return dataclasses.replace(base, device=str(device)) if device.type == "cuda" else base


def _splits(config: Any) -> Any:
    """This worker's data: the whole split loaded, the training loader sharded by (rank, size)."""
    from trainers.distributed import shard
    from trainers.loop import resolve_device
    from trainers.trial import load_splits

    splits = load_splits(config, resolve_device(config.device))
    shard(splits.train)
    return splits


# ---------------------------------------------------------------------------------------------
# A trial


def fit_trial(params: dict[str, Any], base: Any) -> None:
    """The Tune function trainable of a data-parallel trial: run its Train run, report its outcome."""
    from ray.tune.integration.ray_train import TuneReportCallback

    lam, t = float(params["lam"]), float(params["t"])
    share = params.get("worker_resources") or worker_share({"cpu": base.workers_per_trial}, base.workers_per_trial)
    context = tune.get_context()
    run = ray.train.RunConfig(name=f"train-{context.get_trial_id()}", storage_path=context.get_trial_dir(),
                              callbacks=[TuneReportCallback()], failure_config=ray.train.FailureConfig(max_failures=0),
                              checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1))  # fmt: skip
    loop_config = {"base": base, "lam": lam, "t": t, "window": params.get("window"),
                   "trial": int(params.get("proposal", 0)) + 1}
    try:
        _trainer(_trial_worker, loop_config, base.workers_per_trial, share, run).fit()
    except ray.train.TrainingFailedError as error:  # a worker died or raised: a failed trial, not a dead search
        tune.report(failed_metrics(lam, t, error))


def failed_metrics(lam: float, t: float, error: BaseException) -> dict[str, Any]:
    """The last report of a trial whose Train run failed: status "failed", F NaN, the reason as message
    (each failed worker's rank and exception, or the Train controller's)."""
    failures = getattr(error, "worker_failures", None) or {}
    if failures:
        reason = "; ".join(f"worker rank {rank}: {_one_line(exc)}" for rank, exc in sorted(failures.items()))
    else:
        reason = _one_line(getattr(error, "controller_failure", None) or error)
    return {"lam": lam, "t": t, "epoch": 0, "flops_reduction": math.nan, "val_accuracy": math.nan,
            "threshold": math.nan, "loss": math.nan, "status": "failed",
            "message": f"data-parallel trial failed: {reason}"[:500]}  # fmt: skip


def _one_line(error: BaseException) -> str:
    """The error's type and first line; a failed health check with the failure behind it (a dead
    worker's ActorDiedError), a Ray task or actor error with the worker's own exception."""
    cause = getattr(error, "cause", None) or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    text = f"{type(cause).__name__}: {lines[0] if lines else ''}"
    behind = getattr(cause, "health_check_failure", None)
    return f"{text} ({_one_line(behind)})" if behind is not None else text


def _trial_worker(loop_config: dict[str, Any]) -> None:
    """One replica of a trial: run_trial on its shard; rank 0 reports (with the checkpoint), the
    others report empty rows as often (Ray Train's reports are a barrier of all workers)."""
    from search.trainable import decider, epoch_metrics, final_metrics
    from trainers.trial import run_trial

    base, lam, t, window, number = (loop_config[k] for k in ("base", "lam", "t", "window", "trial"))
    lead = ray.train.get_context().get_world_rank() == 0
    config = _replica_config(base)
    work = Path(tempfile.mkdtemp(prefix="polarsearch-replica-"))
    try:
        restored = ray.train.get_checkpoint()
        if restored is not None:  # every worker resumes from rank 0's last epoch
            with restored.as_directory() as folder:
                shutil.copytree(folder, work, dirs_exist_ok=True)

        def report(metrics: dict[str, Any]) -> None:
            if lead:
                row = {**epoch_metrics(metrics, lam, t), "trial": number, "images_per_s": metrics["images_per_s"],
                       "workers": int(metrics["workers"])}  # the job's throughput: scaling read off per epoch
                ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(work))
            else:
                ray.train.report({})

        decide = None if window is None else decider(tuple(window), base.max_epochs)
        result = run_trial(config, lam, t, report=report, checkpoint_dir=work, splits=_splits(config), decide=decide)
        ray.train.report({**final_metrics(result, lam, t), "trial": number} if lead else {})
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The final job


def fit_final(config: Any, lam: float, t: float, output_dir: str, resources: dict[str, float],
              storage_path: str | None = None) -> Any:  # fmt: skip
    """run_final data-parallel on `final_workers` workers sharing `resources`; rank 0's FinalResult."""
    storage = storage_path or str(Path(output_dir).resolve().parent / "ray-train")
    run = ray.train.RunConfig(name="final", storage_path=storage, failure_config=ray.train.FailureConfig(max_failures=0))
    loop_config = {"base": config, "lam": lam, "t": t, "output_dir": str(Path(output_dir).resolve())}
    result = _trainer(_final_worker, loop_config, config.final_workers, worker_share(resources, config.final_workers),
                      run).fit()  # fmt: skip
    with result.checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / _RESULT, weights_only=False)


def _final_worker(loop_config: dict[str, Any]) -> None:
    from trainers.final import run_final

    config = _replica_config(loop_config["base"])
    result = run_final(config, loop_config["lam"], loop_config["t"], loop_config["output_dir"], splits=_splits(config))
    if result is None:  # not rank 0
        ray.train.report({})
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(result, Path(folder) / _RESULT)
        ray.train.report({"flops_reduction": result.flops_reduction}, checkpoint=ray.train.Checkpoint.from_directory(folder))
