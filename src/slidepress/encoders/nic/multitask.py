"""Supervised multitask encoder (Tellez et al., MIDL 2020) and its single-task baseline.

Shared encoder: 4 strided 3x3 convs of 128 filters + BN + LeakyReLU, linear code C. One head
per task: dropout 10%, dense 256, LeakyReLU, dropout 10%, linear to the task's classes
(softmax in the loss). Loss = mean cross-entropy over tasks; every batch holds an equal share
of each task's data. The validation loss pools all validation patches instead (a per-task
mean would let a tiny task, e.g. 8 Kather images, decide early stopping by noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UsageError
from .base import NICMethod
from .blocks import ConvEncoder


def task_head(code_size: int, n_classes: int, hidden: int = 256, dropout: float = 0.1):
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(code_size, hidden),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, n_classes),
    )


class Multitask(NICMethod):
    """`options["tasks"]`: list of {"name": str, "classes": [str, ...]}."""

    data_kind = "tasks"
    defaults = {"widths": [128, 128, 128, 128], "tasks": []}

    def __init__(self, config):
        super().__init__(config)
        if not self.opt["tasks"]:
            raise ValueError(f"{self.name}: options['tasks'] is empty")
        self.encoder = ConvEncoder(config.patch_size, config.code_size, self.opt["widths"])
        self.heads = nn.ModuleDict(
            {t["name"]: task_head(config.code_size, len(t["classes"])) for t in self.opt["tasks"]}
        )

    def embedder(self) -> nn.Module:
        return self.encoder

    def losses(self, batch: dict[str, tuple[torch.Tensor, torch.Tensor]], pooled: bool = False):
        names = list(batch)
        xs = torch.cat([batch[t][0] for t in names])
        codes = self.encoder(xs).split([batch[t][0].shape[0] for t in names])
        logs, per_task = {}, []
        for t, code in zip(names, codes, strict=True):
            y = batch[t][1]
            logit = self.heads[t](code)
            loss_t = F.cross_entropy(logit, y)
            per_task.append(loss_t)
            logs[f"{t}_loss"] = loss_t.item()
            logs[f"{t}_accuracy"] = (logit.argmax(1) == y).float().mean().item()
        loss = torch.stack(per_task).mean()
        if pooled:
            sizes = torch.tensor([float(len(batch[t][1])) for t in names], device=loss.device)
            logs["loss"] = (torch.stack(per_task) * sizes).sum().item() / sizes.sum().item()
            logs["task_mean_loss"] = loss.item()
        else:
            logs["loss"] = loss.item()
        return loss, logs

    @torch.no_grad()
    def validation_step(self, batch):
        return self.losses(batch, pooled=True)[1]


class Supervised(Multitask):
    """The single-task baseline: the multitask network with exactly one task."""

    @classmethod
    def check_inputs(cls, n_data: int, n_slides: int) -> None:
        if n_data != 1 or n_slides:  # --slides would add the tissue task
            raise UsageError("supervised: exactly one --data folder (its classes are the task)")

    def __init__(self, config):
        super().__init__(config)
        if len(self.opt["tasks"]) != 1:
            raise ValueError("supervised: exactly one task (use multitask for several)")
