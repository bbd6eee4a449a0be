"""The one training checkpoint format: all a run needs to continue exactly where it stopped.

`checkpoint.pt` is a `torch.save`d dict, written under a temporary name and renamed
(`store.atomic.atomic_path`), so a run killed mid-write keeps its previous checkpoint:

    format       FORMAT
    family       the trainer's family ("nic-encoder", "learned-codec", ...)
    config       what the model is; a resume with another one is refused
    step         optimisation steps done
    seconds      training time so far (time budgets count earlier sessions)
    models       {name: state_dict}
    optimizers   {name: state_dict}
    schedulers   {name: state_dict}
    rng          torch (CPU and CUDA), numpy's and Python's global states, and the state of
                 every generator the trainer draws from ({name: numpy or torch generator})
    log          rows of log.csv so far, and the sums of the row being accumulated
    state        the family's own progress (best value, early-stopping count, ...)

A resumed run restores all of it, so `3 steps + resume 3` gives the weights of 6 steps.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UsageError
from ..store.atomic import atomic_path

if TYPE_CHECKING:
    from .loop import Progress, Trainer

FORMAT = "slidepress-training-checkpoint/1"
FILE = "checkpoint.pt"

Generator = np.random.Generator | torch.Generator


def _generator_state(g: Generator) -> Any:
    return g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state


def _set_generator_state(g: Generator, state: Any) -> None:
    if isinstance(g, torch.Generator):
        g.set_state(state)
    else:
        g.bit_generator.state = state


def rng_state(generators: dict[str, Generator]) -> dict[str, Any]:
    """Every random state a training step may draw from."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "generators": {k: _generator_state(g) for k, g in generators.items()},
    }


def restore_rng(state: dict[str, Any], generators: dict[str, Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    saved = state["generators"]
    if saved.keys() != generators.keys():
        raise UsageError(
            f"checkpoint holds generators {sorted(saved)}, the run {sorted(generators)}"
        )
    for k, g in generators.items():
        _set_generator_state(g, saved[k])


def save_checkpoint(path: Path, trainer: Trainer, progress: Progress) -> None:
    """The trainer's models, optimisers, schedulers, random states and progress, atomically."""
    data = {
        "format": FORMAT,
        "family": trainer.family,
        "config": trainer.config(),
        "step": progress.step,
        "seconds": progress.seconds,
        "models": {k: m.state_dict() for k, m in trainer.models.items()},
        "optimizers": {k: o.state_dict() for k, o in trainer.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in trainer.schedulers.items()},
        "rng": rng_state(trainer.generators),
        "log": {"rows": progress.rows, "sums": progress.sums, "count": progress.count},
        "state": trainer.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's dict (tensors on the CPU); UsageError for anything else."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UsageError(f"{path}: cannot read the checkpoint ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UsageError(f"{path}: not a {FORMAT} checkpoint ({got!r}); start a new run")
    return data


def restore(path: Path, trainer: Trainer) -> dict[str, Any]:
    """Load `path` into `trainer` (same family and config, else UsageError); returns the
    checkpoint's dict for the loop's progress."""
    data = load_checkpoint(path)
    if data["family"] != trainer.family:
        raise UsageError(f"{path}: a {data['family']} run, not {trainer.family}")
    if data["config"] != trainer.config():
        raise UsageError(f"{path.parent}: --resume with other model settings than the saved run")
    for kind, saved, live in (
        ("models", data["models"], trainer.models),
        ("optimizers", data["optimizers"], trainer.optimizers),
        ("schedulers", data["schedulers"], trainer.schedulers),
    ):
        if saved.keys() != live.keys():
            raise UsageError(f"{path}: {kind} {sorted(saved)} saved, the run has {sorted(live)}")
        for k, obj in live.items():
            obj.load_state_dict(saved[k])
    trainer.load_state_dict(data["state"])
    restore_rng(data["rng"], trainer.generators)
    return data
