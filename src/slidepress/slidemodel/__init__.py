"""Slide-level models on NIC embedding grids: models, tasks/losses/metrics and Grad-CAM.

Neural Image Compression (Tellez et al., TPAMI 2019; MIDL 2020) turns a slide into a grid of
patch codes (H, W, C); the models here learn slide labels (classification, regression,
survival) from such grids.

Two registries, declared here one line per entry so that listing them (help texts, errors)
imports no torch: `SLIDE_MODELS` (a new model is one class in a module plus one
`SLIDE_MODELS.add(...)` line) and `TASKS` (a task owns its label columns, parsing, strata,
loss, metrics, prediction columns and report extras). The model classes, `grad_cam` and
`cox_ph_loss` are imported from this package on first use (they import torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from .tasks import Task

SLIDE_MODELS: Registry[type[nn.Module]] = Registry("slide model", UsageError, name_attr="name")
SLIDE_MODELS.add(
    "nic-cnn",
    "slidepress.slidemodel.models:NICCNN",
    summary="the NIC slide CNN on crops of the grid (Tellez et al., TPAMI 2019)",
)
SLIDE_MODELS.add(
    "abmil",
    "slidepress.slidemodel.models:ABMIL",
    summary="gated attention MIL over the tissue cells (Ilse et al., ICML 2018)",
)

TASKS: Registry[type[Task]] = Registry("task", UsageError, name_attr="name")
TASKS.add(
    "classify",
    "slidepress.slidemodel.tasks:ClassifyTask",
    summary="CSV column label; cross-entropy, ROC AUC",
)
TASKS.add(
    "regress",
    "slidepress.slidemodel.tasks:RegressTask",
    summary="CSV column value; MSE, Spearman's rho",
)
TASKS.add(
    "survival",
    "slidepress.slidemodel.tasks:SurvivalTask",
    summary="CSV columns time, event; Cox loss, C-index, Kaplan-Meier risk groups",
)

register_slide_model = SLIDE_MODELS.register  # decorators for models / tasks defined elsewhere
register_task = TASKS.register


def build_slide_model(name: str, in_channels: int, n_outputs: int, **kwargs: Any) -> nn.Module:
    """Build the registered model `name`; `kwargs` are its hyper-parameters."""
    return SLIDE_MODELS.get(name)(in_channels, n_outputs, **kwargs)


def build_task(name: str) -> Task:
    return TASKS.get(name)()


_LAZY = {
    "ABMIL": "models",
    "NICCNN": "models",
    "tissue_mask": "models",
    "grad_cam": "gradcam",
    "cox_ph_loss": "losses",
    "Task": "tasks",
    "ClassifyTask": "tasks",
    "RegressTask": "tasks",
    "SurvivalTask": "tasks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SLIDE_MODELS",
    "TASKS",
    "build_slide_model",
    "build_task",
    "register_slide_model",
    "register_task",
    *_LAZY,
]
