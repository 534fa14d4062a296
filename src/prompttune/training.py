"""The shared trainer: AdamW, warm-up + linear decay, clipping, best-on-dev, atomic checkpoints.

Every gradient method trains its prompt module through `train_prompt`. A run is a pure function
of (seed, config, data): batch order comes from a generator seeded per epoch, the frozen model has
no dropout, and a checkpoint holds the module, the optimizer state and the best state so far, so
a run resumed from a checkpoint ends bit-identical to one that never stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors import safe_open

from .errors import ArtifactError, ConfigError
from .utils.io import atomic_save_tensors

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINTS = "checkpoint*.safetensors"  # multi-phase methods keep one per phase


class TrainConfig(BaseModel):
    """Optimisation settings shared by every gradient method."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(64, ge=1, description="optimizer steps")
    lr: float = Field(0.03, gt=0, description="peak learning rate (AdamW)")
    batch_size: int = Field(8, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of steps with linear warm-up")
    weight_decay: float = Field(1e-5, ge=0)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping (global L2 norm)")
    eval_every: int = Field(16, ge=1, description="evaluate on dev every N steps (and at the end)")
    checkpoint_every: int | None = Field(None, ge=1, description="default: eval_every")


@dataclass
class Evaluation:
    accuracy: float
    loss: float

    def better_than(self, other: Evaluation | None) -> bool:
        """Higher dev accuracy wins; on a tie (common on small dev sets) the lower dev loss does."""
        if other is None:
            return True
        return (self.accuracy, -self.loss) > (other.accuracy, -other.loss)


@dataclass
class TrainOutcome:
    best_state: dict[str, torch.Tensor]
    best_step: int
    best: Evaluation
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for 1-based `step`: linear warm-up, then linear decay to zero."""
    warmup = int(cfg.steps * cfg.warmup_ratio)
    if warmup and step <= warmup:
        return cfg.lr * step / warmup
    return cfg.lr * max(0.0, (cfg.steps - step + 1) / max(1, cfg.steps - warmup))


def batch_indices(step: int, n_examples: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of 1-based `step`: consecutive slices of a seeded permutation per epoch."""
    start = (step - 1) * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_examples)
        perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = min(batch_size - len(out), n_examples - offset)
        out.extend(perm[offset : offset + take].tolist())
    return out


@dataclass
class DataParallel:
    """This process's share of a data-parallel run (`accelerate launch` / torchrun, DDP semantics).

    Every process holds the whole (small) prompt and sees the same global batch indices; each one
    takes a strided slice, scales its loss by its share, and the gradients are summed across
    processes before the step, so every process takes the step the single-process run would take
    on the global batch. Process 0 alone writes checkpoints and artifacts.
    """

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> DataParallel:
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        if not torch.distributed.is_initialized():
            from accelerate import PartialState

            PartialState()  # sets up the process group from the launcher's environment (gloo on CPU, nccl on GPU)
        return cls(torch.distributed.get_rank(), torch.distributed.get_world_size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: list[int]) -> list[int]:
        return indices[self.rank :: self.world]

    def all_reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            value = value.detach().clone()
            torch.distributed.all_reduce(value)
        return value


def train_prompt(
    module: torch.nn.Module,
    loss_fn: Callable[[Sequence[int]], torch.Tensor],
    eval_fn: Callable[[], Evaluation],
    n_examples: int,
    cfg: TrainConfig,
    seed: int,
    checkpoint_dir: Path,
    resume: bool = False,
    progress: bool = True,
    param_groups: list[dict[str, Any]] | None = None,
    callbacks: Sequence[Callable[[int, float], None]] = (),
    fingerprint: str = "",
    checkpoint: str = CHECKPOINT,
) -> TrainOutcome:
    """Train `module`'s parameters to minimise `loss_fn(batch indices)`, keeping the best on dev.

    `fingerprint` identifies the run (method, config, data, backbone); a checkpoint from another
    run is refused rather than silently continued.
    """
    groups = param_groups or [{"params": [p for p in module.parameters() if p.requires_grad]}]
    for g in groups:
        g.setdefault("lr_scale", 1.0)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    trainable = [p for g in groups for p in g["params"]]
    ckpt_every = cfg.checkpoint_every or cfg.eval_every
    ckpt_path = checkpoint_dir / checkpoint
    dp = DataParallel.current()
    if cfg.batch_size < dp.world:
        raise ConfigError(f"batch_size {cfg.batch_size} is smaller than the {dp.world} data-parallel processes")
    progress = progress and dp.is_main

    step, history = 0, []
    best: Evaluation | None = None
    best_state, best_step = _snapshot(module), 0
    if resume and ckpt_path.exists():
        step, best, best_step, best_state, history = _load_checkpoint(ckpt_path, module, optimizer, fingerprint)
    if step == 0:
        best = eval_fn()
        best_state = _snapshot(module)
        history.append({"step": 0, "dev_accuracy": best.accuracy, "dev_loss": best.loss})

    with _progress_bar(progress) as bar:
        task_id = bar.add_task("training", total=cfg.steps, completed=step, loss=float("nan"),
                               dev=best.accuracy if best else float("nan"))
        while step < cfg.steps:
            step += 1
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, cfg) * g["lr_scale"]
            optimizer.zero_grad(set_to_none=True)
            batch = batch_indices(step, n_examples, cfg.batch_size, seed)
            share = dp.shard(batch)
            loss = loss_fn(share) * (len(share) / len(batch))  # the shares' losses sum to the batch mean
            loss.backward()
            dp.all_reduce_gradients(trainable)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            loss_value = float(dp.sum(loss.detach()))
            record: dict[str, Any] = {"step": step, "loss": loss_value, "lr": lr_at(step, cfg)}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                ev = eval_fn()
                record.update(dev_accuracy=ev.accuracy, dev_loss=ev.loss)
                if ev.better_than(best):
                    best, best_state, best_step = ev, _snapshot(module), step
            history.append(record)
            bar.update(task_id, advance=1, loss=loss_value, dev=best.accuracy)
            if dp.is_main and (step % ckpt_every == 0 or step == cfg.steps):
                _save_checkpoint(ckpt_path, module, optimizer, step, best, best_step, best_state, history,
                                 fingerprint)
            for cb in callbacks:
                cb(step, loss_value)
    assert best is not None
    return TrainOutcome(best_state=best_state, best_step=best_step, best=best, history=history)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("best dev {task.fields[dev]:.3f}"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=False,
    )


def _param_names(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """A stable name for each parameter the optimizer holds, in its param_groups order: the module's
    name for it, or `group<g>.<i>` for a parameter the module does not own."""
    names = {id(p): n for n, p in module.named_parameters(remove_duplicate=False)}
    return [names.get(id(p), f"group{g}.{i}") for g, group in enumerate(optimizer.param_groups)
            for i, p in enumerate(group["params"])]


def _save_checkpoint(path, module, optimizer, step, best, best_step, best_state, history, fingerprint) -> None:
    tensors = {f"module.{k}": v for k, v in module.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best_state.items()})
    # Optimizer state keyed by parameter name: a parameter that has no state yet (it never got a
    # gradient) must not shift the others' state onto the wrong parameters at resume.
    params = [p for g in optimizer.param_groups for p in g["params"]]
    optim_state: dict[str, list[str]] = {}
    for name, p in zip(_param_names(module, optimizer), params, strict=True):
        state = optimizer.state.get(p)
        if state:
            optim_state[name] = sorted(state)
            for key, value in state.items():
                tensors[f"optim.{name}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    meta = {
        "step": step, "best_step": best_step, "best_accuracy": best.accuracy, "best_loss": best.loss,
        "history": history, "fingerprint": fingerprint, "optim_state": optim_state,
    }
    atomic_save_tensors(path, tensors, {"prompttune": json.dumps(meta)})


def _load_checkpoint(path, module, optimizer, fingerprint):
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["prompttune"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # a truncated or foreign file
        raise ArtifactError(f"{path}: not a readable prompttune checkpoint ({exc})") from None
    if not isinstance(meta.get("optim_state"), dict):  # before the fingerprint, which older versions computed otherwise
        raise ArtifactError(f"{path}: checkpoint written by an older prompttune (optimizer state by position); "
                            "this version cannot resume it: use --overwrite to start the run over")
    if meta.get("fingerprint") != fingerprint:
        raise ArtifactError(
            f"{path}: checkpoint belongs to a different run (method, hyper-parameters, data or model differ); "
            "use --overwrite to start over"
        )
    module.load_state_dict({k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")})
    best_state = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
    names = _param_names(module, optimizer)
    unknown = set(meta["optim_state"]) - set(names)
    if unknown:
        raise ArtifactError(f"{path}: optimizer state of parameters this run does not have: "
                            f"{', '.join(sorted(unknown))}")
    state_dict = optimizer.state_dict()  # its "params" are indices in param_groups order, as `names` is
    ids = [i for g in state_dict["param_groups"] for i in g["params"]]
    state_dict["state"] = {
        pid: {key: tensors[f"optim.{name}.{key}"] for key in meta["optim_state"][name]}
        for pid, name in zip(ids, names, strict=True) if name in meta["optim_state"]
    }
    optimizer.load_state_dict(state_dict)
    best = Evaluation(meta["best_accuracy"], meta["best_loss"])
    return meta["step"], best, meta["best_step"], best_state, meta["history"]
