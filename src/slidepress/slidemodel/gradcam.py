"""Grad-CAM heatmaps for slide models (Selvaraju et al., "Grad-CAM: Visual Explanations from
Deep Networks via Gradient-based Localization", ICCV 2017).

Tellez et al. (TPAMI 2019) compute Grad-CAM on the *first* layer of the NIC CNN rather than the
last one: the grid is already coarse (one cell per patch), so resolution matters more than
semantic depth. Each model names its layer in ``cam_layer``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def grad_cam(
    model: nn.Module,
    x: Tensor,
    mask: Tensor | np.ndarray | None = None,
    target: int | None = None,
) -> np.ndarray:
    """Grad-CAM map of one grid `x` (1, C, H, W) -> (H, W) float32 in [0, 1].

    `target` is the class explained for a classifier (default: the predicted class); for a
    single-output model (regression, survival risk) the output itself is explained. The map is
    ReLU(sum_k mean(dy/dA_k) A_k) on ``model.cam_layer``, bilinearly resized to (H, W), zero
    outside `mask`, divided by its maximum (an all-zero map stays zero). The model is run in
    eval mode and put back in its previous mode; parameter gradients are left untouched.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"grad_cam takes one grid (1, C, H, W), got {tuple(x.shape)}")
    h, w = x.shape[2:]
    m = None
    if mask is not None:
        m = torch.as_tensor(mask, device=x.device).bool().reshape(1, h, w)

    captured: list[Tensor] = []
    hook = model.cam_layer.register_forward_hook(lambda _mod, _inp, out: captured.append(out))
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            # the input requires grad so that a frozen model still builds a graph
            out = model(x.detach().clone().requires_grad_(True), m)
            if out.shape[1] == 1:
                score = out[0, 0]
            else:
                k = int(out[0].argmax()) if target is None else int(target)
                score = out[0, k]
            acts = captured[-1]
            (grads,) = torch.autograd.grad(score, acts)
    finally:
        hook.remove()
        model.train(was_training)

    weights = grads.mean(dim=(2, 3), keepdim=True)  # (1, K, 1, 1)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    if m is not None:
        cam = cam * m[0]
    peak = cam.max()
    if peak > 0:
        cam = cam / peak
    return cam.clamp(0, 1).float().cpu().numpy()
