"""The generic step loop: a family's `Trainer` says what one step does; the loop runs steps
within a `Budget`, averages what they return into log.csv rows, checkpoints and resumes.

Steps come in periods (`Trainer.period`: 1, or an epoch for families that draw their data
per epoch): budgets, pauses and checkpoints fall on period boundaries, so a resumed run
continues with exactly the draws of an uninterrupted one.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from .checkpoint import Generator, restore, save_checkpoint
from .run import Budget, Run


class Trainer(ABC):
    """One model family's training: what is trained, and what one step does.

    `__init__` builds the model and fills `models` and `optimizers` (and `schedulers`, and
    `generators`: the numpy or torch generators the steps draw from besides torch's global
    one), by name: the checkpoint saves and restores exactly these."""

    family: ClassVar[str]
    period: int = 1  # steps that belong together (an epoch of per-epoch-seeded data)
    models: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any] = {}  # replaced by trainers that have some, never mutated
    generators: dict[str, Generator] = {}

    @abstractmethod
    def config(self) -> dict:
        """What the model is (saved; a resume with another one is refused)."""

    @abstractmethod
    def step(self, step: int, progress: float) -> dict[str, float]:
        """Optimisation step number `step` (from 0); `progress` is the fraction of the
        budget used (for schedules). Returns numbers to average into the next log row."""

    def row(self, step: int, means: dict[str, float]) -> dict[str, Any]:
        """The log.csv row after `step` from the steps' mean numbers (add validation here)."""
        return means

    def finished(self) -> bool:
        """True to stop before the budget is spent (early stopping)."""
        return False

    def checkpointed(self, progress: Progress) -> None:  # noqa: B027 - optional hook
        """Called after each checkpoint (write what should follow it, e.g. config.json)."""

    def state_dict(self) -> dict:
        """The family's own progress (best value, ...), saved in the checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 - optional hook
        pass


@dataclass
class Progress:
    step: int = 0
    seconds: float = 0.0  # training time, earlier sessions included
    rows: list[dict] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)  # of the row being accumulated
    count: int = 0
    stopped: str = ""  # why this session ended: done, time, paused, finished


def mean_of(rows: list[dict]) -> dict[str, float]:
    """Key-wise means of dicts of numbers."""
    sums: dict[str, float] = {}
    for r in rows:
        for k, v in r.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {k: v / len(rows) for k, v in sums.items()}


def _fmt(row: dict) -> str:
    return " ".join(
        f"{k}={v:.4g}" for k, v in row.items() if k not in ("step", "seconds") and np.isscalar(v)
    )


def fit(trainer: Trainer, run: Run, budget: Budget, *, log_every: int = 1,
        checkpoint_every: int | None = None, stop_after: int | None = None,
        log: Callable[[str], None] = print) -> Progress:  # fmt: skip
    """Train within `budget`, resuming from `run`'s checkpoint when `run.resume`.

    A row goes to log.csv every `log_every` steps, a checkpoint is saved every
    `checkpoint_every` steps (default: with every row) and when the session ends.
    `stop_after` pauses the run after that step (checkpointed); a resume continues it as
    planned. Ctrl-C keeps the last checkpoint."""
    p = Progress()
    if run.resume:
        saved = restore(run.checkpoint, trainer)
        p = Progress(saved["step"], saved["seconds"], **saved["log"])
        log(f"resuming at step {p.step}")
    every = checkpoint_every or log_every
    t0 = time.perf_counter() - p.seconds
    saved_at = p.step if run.resume else -1
    while p.step < budget.steps:
        p.seconds = time.perf_counter() - t0
        if p.step % trainer.period == 0:
            if trainer.finished():
                p.stopped = "finished"
            elif budget.out_of_time(p.seconds):
                p.stopped = "time"
                log(f"time budget reached at step {p.step}")
            elif stop_after is not None and p.step >= stop_after:
                p.stopped = "paused"
            if p.stopped:
                break
        terms = trainer.step(p.step, budget.fraction(p.step, p.seconds))
        p.step += 1
        for k, v in terms.items():
            p.sums[k] = p.sums.get(k, 0.0) + float(v)
        p.count += 1
        end = p.step == budget.steps
        if p.step % log_every == 0 or end:
            means = {k: v / p.count for k, v in p.sums.items()}
            p.seconds = time.perf_counter() - t0
            p.rows.append({"step": p.step, "seconds": round(p.seconds, 1),
                           **trainer.row(p.step, means)})  # fmt: skip
            p.sums, p.count = {}, 0
        if p.step % every == 0 or end:
            _checkpoint(trainer, run, p, time.perf_counter() - t0)
            saved_at = p.step
            log(f"step {p.step}: {_fmt(p.rows[-1])}" if p.rows else f"step {p.step}")
    p.stopped = p.stopped or "done"
    if saved_at != p.step:
        _checkpoint(trainer, run, p, time.perf_counter() - t0)
    run.write_curves(p.rows)
    return p


def _checkpoint(trainer: Trainer, run: Run, p: Progress, seconds: float) -> None:
    p.seconds = seconds
    save_checkpoint(run.checkpoint, trainer, p)
    run.write_log(p.rows)
    trainer.checkpointed(p)
