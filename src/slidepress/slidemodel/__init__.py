"""Slide-level models on NIC embedding grids: models, tasks/losses/metrics and Grad-CAM.

Neural Image Compression (Tellez et al., TPAMI 2019; MIDL 2020) turns a slide into a grid of
patch codes (H, W, C); the models here learn slide labels (classification, regression,
survival) from such grids. Pure PyTorch, no file I/O; importing this package imports torch.
"""

from .gradcam import grad_cam
from .models import (
    ABMIL,
    NICCNN,
    SLIDE_MODELS,
    build_slide_model,
    register_slide_model,
    tissue_mask,
)
from .tasks import (
    TASKS,
    ClassifyTask,
    RegressTask,
    SurvivalTask,
    Task,
    bootstrap_ci,
    build_task,
    cox_ph_loss,
    register_task,
)

__all__ = [
    "ABMIL",
    "NICCNN",
    "SLIDE_MODELS",
    "TASKS",
    "ClassifyTask",
    "RegressTask",
    "SurvivalTask",
    "Task",
    "bootstrap_ci",
    "build_slide_model",
    "build_task",
    "cox_ph_loss",
    "grad_cam",
    "register_slide_model",
    "register_task",
    "tissue_mask",
]
