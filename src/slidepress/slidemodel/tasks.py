"""Slide-level tasks: what a model predicts, how it is trained, scored and reported.

Three tasks share one interface (registry `slidemodel.TASKS`, factory `build_task`):

- ``"classify"``: cross-entropy on integer labels; accuracy and ROC AUC (binary: on the
  positive-class probability; multiclass: macro one-vs-rest).
- ``"regress"``: mean squared error; Spearman's rho (what matters for e.g. proliferation
  scores in TUPAC16, Tellez et al., TPAMI 2019) and MSE.
- ``"survival"``: Cox proportional hazards on a single risk output (the partial likelihood as
  a loss, `losses.cox_ph_loss`), scored by Harrell's C-index, reported with Kaplan-Meier risk
  groups. Targets are (N, 2) arrays of [time, event].

A task owns everything that differs between tasks: its label columns and their parsing, the
strata of folds and bootstrap resamples, balanced batches, how test-time crops combine, the
prediction / target columns and the report extras. Data loading, cross-validation and fitting
never ask which task they run. Torch is imported only by the methods that need it, so reading
labels stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..metrics.stats import nan_on_error, roc_auc

if TYPE_CHECKING:
    from torch import Tensor

    from .data import LabelTable


def softmax_np(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Task:
    """How a slide model's targets are read (`columns`, `parse_targets`), trained (`loss`),
    scored (`metrics`) and written out (`prediction_columns`, `target_columns`, `report`)."""

    name: ClassVar[str] = "base"  # set from the registry entry
    primary: ClassVar[str] = ""  # the metric used for model selection (higher is better)
    columns: ClassVar[tuple[str, ...]] = ()  # the labels-CSV columns holding the target

    # -- labels ------------------------------------------------------------------------------
    def parse_targets(self, table: LabelTable) -> tuple[np.ndarray, list[str]]:
        """Targets (N, ...) and class names (classification only) from the labels CSV;
        UsageError naming the line of a bad value."""
        raise NotImplementedError

    def strata(self, targets: np.ndarray) -> np.ndarray:
        """One label per slide that cross-validation folds are balanced over."""
        raise NotImplementedError

    def bootstrap_strata(self, targets: np.ndarray) -> np.ndarray | None:
        """Resample within these strata for bootstrap CIs (None: resample all rows)."""
        return None

    def batch_pools(self, targets: np.ndarray, n_outputs: int) -> list[np.ndarray] | None:
        """Slide indices that training batches draw from in turn (None: uniformly)."""
        return None

    # -- training ----------------------------------------------------------------------------
    def n_outputs(self, n_classes: int | None = None) -> int:
        raise NotImplementedError

    def target_tensor(self, targets: np.ndarray) -> Tensor:
        import torch

        return torch.from_numpy(np.asarray(targets).astype(np.float32))

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def combine_crops(self, outputs: Tensor) -> Tensor:
        """One slide's output from the outputs of its test-time crops (rows)."""
        return outputs.mean(0)

    def cam_target(self, n_outputs: int) -> int | None:
        """The output Grad-CAM explains (None: the model's top output per slide)."""
        return None

    # -- scoring and writing -----------------------------------------------------------------
    def metrics(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def prediction_columns(
        self, outputs: np.ndarray, classes: list[str] | tuple[str, ...] = ()
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def target_columns(self, target: np.ndarray, classes: list[str]) -> dict[str, Any]:
        """The CSV columns of one slide's target (as read from the labels)."""
        return {c: float(v) for c, v in zip(self.columns, np.atleast_1d(target), strict=True)}

    def report(
        self, outputs: np.ndarray, targets: np.ndarray, fold_of: np.ndarray, out_dir: Path
    ) -> dict[str, Any]:
        """Extra entries of metrics.json for out-of-fold `outputs` (and files in `out_dir`)."""
        return {}


class ClassifyTask(Task):
    """Targets are integer class labels; outputs are (N, n_classes) logits."""

    primary = "auc"
    columns = ("label",)

    def parse_targets(self, table: LabelTable) -> tuple[np.ndarray, list[str]]:
        names = table.text("label", missing="give every slide a class or drop the row")
        classes = sorted(set(names), key=lambda s: (len(s), s))  # "2" < "10"
        if len(classes) < 2:
            raise table.error("classification needs at least 2 classes")
        index = {c: k for k, c in enumerate(classes)}
        return np.array([index[n] for n in names], np.int64), classes

    def strata(self, targets: np.ndarray) -> np.ndarray:
        return targets

    def bootstrap_strata(self, targets: np.ndarray) -> np.ndarray | None:
        return targets

    def batch_pools(self, targets: np.ndarray, n_outputs: int) -> list[np.ndarray] | None:
        # balanced batches (slides per class drawn equally): small cohorts are often
        # imbalanced, and a batch of one class teaches nothing about the boundary
        pools = [np.flatnonzero(targets == k) for k in range(n_outputs)]
        return [p for p in pools if len(p)]

    def n_outputs(self, n_classes: int | None = None) -> int:
        if n_classes is None or n_classes < 2:
            raise ValueError("classification needs n_classes >= 2")
        return n_classes

    def target_tensor(self, targets: np.ndarray) -> Tensor:
        import torch

        return torch.from_numpy(np.asarray(targets).astype(np.int64))

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(output, target.reshape(-1).long())

    def combine_crops(self, outputs: Tensor) -> Tensor:
        # average probabilities; return their log ("logits" a softmax maps back exactly)
        import torch

        return torch.log(torch.softmax(outputs, dim=1).mean(0).clamp_min(1e-12))

    def cam_target(self, n_outputs: int) -> int | None:
        return 1 if n_outputs == 2 else None  # binary: explain the positive class

    def metrics(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        prob = softmax_np(outputs)
        y = np.asarray(targets).reshape(-1).astype(int)
        return {"accuracy": float((prob.argmax(1) == y).mean()), "auc": roc_auc(y, prob)}

    def prediction_columns(
        self, outputs: np.ndarray, classes: list[str] | tuple[str, ...] = ()
    ) -> dict[str, np.ndarray]:
        """prob_<class> per class and the predicted class (names when `classes` given)."""
        prob = softmax_np(outputs)
        names = list(classes) or list(range(prob.shape[1]))
        cols: dict[str, np.ndarray] = {f"prob_{names[k]}": prob[:, k] for k in range(len(names))}
        pred = prob.argmax(1)
        cols["predicted"] = np.asarray(names, dtype=object)[pred] if classes else pred
        return cols

    def target_columns(self, target: np.ndarray, classes: list[str]) -> dict[str, Any]:
        return {"label": classes[int(target)]}


class RegressTask(Task):
    """Targets are real numbers; the single output is the prediction."""

    primary = "spearman"
    columns = ("value",)

    def parse_targets(self, table: LabelTable) -> tuple[np.ndarray, list[str]]:
        return table.numbers("value").astype(np.float32), []

    def strata(self, targets: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.quantile(targets, [0.25, 0.5, 0.75]), targets)  # quartiles

    def n_outputs(self, n_classes: int | None = None) -> int:
        return 1

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        import torch.nn.functional as F

        return F.mse_loss(output.reshape(-1), target.reshape(-1).to(output.dtype))

    def metrics(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        from scipy.stats import spearmanr

        pred = np.asarray(outputs, dtype=np.float64).reshape(-1)
        y = np.asarray(targets, dtype=np.float64).reshape(-1)
        rho = nan_on_error(lambda: spearmanr(pred, y).statistic)
        return {"spearman": rho, "mse": float(np.mean((pred - y) ** 2))}

    def prediction_columns(
        self, outputs: np.ndarray, classes: list[str] | tuple[str, ...] = ()
    ) -> dict[str, np.ndarray]:
        return {"prediction": np.asarray(outputs).reshape(-1)}


class SurvivalTask(Task):
    """Targets are (N, 2) [time, event]; the single output is a log-risk (higher = earlier)."""

    primary = "c_index"
    columns = ("time", "event")
    ties: ClassVar[str] = "efron"

    def parse_targets(self, table: LabelTable) -> tuple[np.ndarray, list[str]]:
        t = table.numbers("time").astype(np.float32)
        e = table.numbers("event").astype(np.float32)
        if (t <= 0).any():
            raise table.error("survival times must be > 0")
        if not np.isin(e, (0, 1)).all():
            raise table.error("event must be 0 (censored) or 1")
        if e.sum() < 2:
            raise table.error("fewer than 2 events; a Cox model cannot learn")
        return np.stack([t, e], 1), []

    def strata(self, targets: np.ndarray) -> np.ndarray:
        return targets[:, 1].astype(int)  # events spread over the folds

    def n_outputs(self, n_classes: int | None = None) -> int:
        return 1

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        from .losses import cox_ph_loss

        target = target.reshape(-1, 2)
        return cox_ph_loss(output.reshape(-1), target[:, 0], target[:, 1], ties=self.ties)

    def metrics(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        from lifelines.utils import concordance_index

        risk = np.asarray(outputs, dtype=np.float64).reshape(-1)
        t = np.asarray(targets, dtype=np.float64).reshape(-1, 2)
        c = nan_on_error(lambda: concordance_index(t[:, 0], -risk, t[:, 1].astype(bool)))
        return {"c_index": c}

    def prediction_columns(
        self, outputs: np.ndarray, classes: list[str] | tuple[str, ...] = ()
    ) -> dict[str, np.ndarray]:
        return {"risk": np.asarray(outputs).reshape(-1)}

    def target_columns(self, target: np.ndarray, classes: list[str]) -> dict[str, Any]:
        return {"time": float(target[0]), "event": int(target[1])}

    def report(
        self, outputs: np.ndarray, targets: np.ndarray, fold_of: np.ndarray, out_dir: Path
    ) -> dict[str, Any]:
        """High vs low risk split at the median predicted risk within each fold (risks of
        different fold models are not on one scale); log-rank p and km.png."""
        from lifelines.statistics import logrank_test

        from .report import save_km_plot

        risk = np.asarray(outputs).reshape(-1)  # one output: the log-risk
        high = np.zeros(len(risk), bool)
        for f in np.unique(fold_of):
            sel = fold_of == f
            high[sel] = risk[sel] > np.median(risk[sel])
        t, e = targets[:, 0], targets[:, 1].astype(bool)
        test = logrank_test(t[high], t[~high], event_observed_A=e[high], event_observed_B=e[~high])
        p = float(test.p_value)
        save_km_plot(t, e, high, p, Path(out_dir) / "km.png")
        return {"risk_groups": {"logrank_p": p, "n_high": int(high.sum()),
                                "n_low": int((~high).sum())}}  # fmt: skip
