"""The contract every NIC training method fulfils.

A method owns its networks and its objective (CompressAI style: one class per model, looked
up by name in `METHODS`). The trainer in `slidepress.training.nic` only calls `training_step` /
`validation_step`; what a method needs from the data is said by `data_kind` (the feed the
loop builds) and `check_inputs` (refusing inputs before any data loads).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .config import NORMALIZATION, NICConfig

__all__ = ["NORMALIZATION", "NICConfig", "NICMethod", "optimizer_step"]


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class NICMethod(nn.Module):
    """Networks + objective of one NIC encoder-training method.

    Most methods only define `losses(batch) -> (loss, logs)`: one optimiser, one step per
    batch. Methods with several optimisers (a GAN) override `training_step`."""

    name: ClassVar[str] = "base"  # set from the registry entry
    # the feed the loop must build: "images" (unlabelled), "tasks" (labelled) or "pairs"
    data_kind: ClassVar[str] = "images"
    defaults: ClassVar[dict[str, Any]] = {}
    # weight prefixes only training needs (e.g. a GAN's discriminator): left out of shipped files
    training_only: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: NICConfig):
        super().__init__()
        self.config = config
        self.opt = {**self.defaults, **config.options}
        # fraction of the training budget used, set by the trainer before every step (for
        # schedules such as a KL warm-up; derived from the step, so exact after a resume)
        self.progress = 1.0

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Refuse (UsageError) option names this method does not have, before anything loads
        (a misspelt `--option` would otherwise train with the default, silently)."""
        unknown = sorted(set(options) - set(cls.defaults))
        if unknown:
            from ...errors import UsageError

            raise UsageError(
                f"method {cls.name!r} has no option {', '.join(map(repr, unknown))}; its "
                f"options: {', '.join(sorted(cls.defaults)) or 'none'}"
            )

    @classmethod
    def check_inputs(cls, n_data: int, n_slides: int) -> None:
        """Refuse (UsageError) `--data` / `--slides` counts this method cannot use, before
        anything loads. The feed checks what its data kind needs; this is for the rest."""

    def embedder(self) -> nn.Module:
        """The frozen patch -> code network used by `encode` (input normalised to [-1, 1])."""
        raise NotImplementedError

    def make_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=self.config.lr)]

    def losses(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The objective on one batch and the floats to log (`loss` among them)."""
        raise NotImplementedError

    def training_step(self, batch: Any, optimizers: list[torch.optim.Optimizer]) -> dict:
        """One update (backward + step done here, so GANs can alternate). Returns floats."""
        loss, logs = self.losses(batch)
        optimizer_step(loss, optimizers[0])
        return logs

    @torch.no_grad()
    def validation_step(self, batch: Any) -> dict:
        """Floats for the log; `loss` drives LR decay, early stopping and the best checkpoint."""
        return self.losses(batch)[1]

    @torch.no_grad()
    def preview(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Optional image panels (real vs reconstructed / generated) in [-1, 1]."""
        return {}
