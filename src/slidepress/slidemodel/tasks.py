"""Slide-level tasks: what a model predicts, how it is trained and how it is scored.

Three tasks share one interface (registry `TASKS`, factory `build_task`):

- ``"classify"``: cross-entropy on integer labels; accuracy and ROC AUC (binary: on the
  positive-class probability; multiclass: macro one-vs-rest).
- ``"regress"``: mean squared error; Spearman's rho (what matters for e.g. proliferation
  scores in TUPAC16, Tellez et al., TPAMI 2019) and MSE.
- ``"survival"``: Cox proportional hazards on a single risk output (the partial likelihood as
  a loss, as in DeepSurv, Katzman et al., BMC Med Res Methodol 2018), scored by Harrell's
  C-index. Targets are (N, 2) arrays of [time, event].

`bootstrap_ci` gives percentile confidence intervals for any metric.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def cox_ph_loss(risk: Tensor, time: Tensor, event: Tensor, ties: str = "efron") -> Tensor:
    """Negative Cox partial log-likelihood per event (higher `risk` = earlier event).

    ``ties="breslow"`` treats tied events as sharing the full risk set; ``"efron"`` (lifelines'
    and R's default) removes a growing fraction of the tied events from it, which is less
    biased with many ties (coarse follow-up times). Log-sums use (cumulative) logsumexp, so
    large risks do not overflow. With no event the loss is 0 but still attached to the graph.
    """
    if ties not in ("efron", "breslow"):
        raise ValueError(f"ties must be 'efron' or 'breslow', not {ties!r}")
    risk = risk.reshape(-1)
    time = torch.as_tensor(time, device=risk.device).reshape(-1)
    event = torch.as_tensor(event, device=risk.device).reshape(-1).bool()
    if not (risk.numel() == time.numel() == event.numel()):
        raise ValueError("risk, time and event must have the same length")
    n_events = int(event.sum())
    if n_events == 0:
        return risk.sum() * 0

    uniq, group = torch.unique(time, sorted=True, return_inverse=True)  # ascending times
    n_groups = uniq.numel()
    # log S_g = log sum_{t_k >= u_g} exp(r_k): cumulative logsumexp in descending time order,
    # read at the last sample whose time is >= u_g
    order = torch.argsort(time, descending=True, stable=True)
    log_cum = torch.logcumsumexp(risk[order], dim=0)
    at_least = torch.bincount(group, minlength=n_groups).flip(0).cumsum(0).flip(0)
    log_s = log_cum[at_least - 1]

    idx = event.nonzero().squeeze(1)
    r_ev, g_ev = risk[idx], group[idx]
    log_s_ev = log_s[g_ev]
    if ties == "breslow":
        denom = log_s_ev
    else:
        d = torch.bincount(g_ev, minlength=n_groups)  # events per distinct time
        # rank l of each event among the tied events of its time: 0 .. d-1
        sorted_g, perm = torch.sort(g_ev, stable=True)
        start = torch.cumsum(d, 0) - d
        rank = torch.empty_like(g_ev)
        rank[perm] = torch.arange(g_ev.numel(), device=risk.device) - start[sorted_g]
        # log T_g = log sum of exp(r) over the tied events, shifted by the group's max
        shift = torch.full((n_groups,), -math.inf, dtype=risk.dtype, device=risk.device)
        shift = shift.scatter_reduce(0, g_ev, r_ev.detach(), reduce="amax")[g_ev]
        sums = torch.zeros(n_groups, dtype=risk.dtype, device=risk.device)
        log_t_ev = torch.log(sums.index_add(0, g_ev, torch.exp(r_ev - shift))[g_ev]) + shift
        # log(S - l/d T) = log S + log1p(-l/d T/S), with T <= S and l/d < 1
        frac = rank.to(risk.dtype) / d[g_ev].to(risk.dtype)
        denom = log_s_ev + torch.log1p(-frac * torch.exp(log_t_ev - log_s_ev))
    return -(r_ev - denom).sum() / n_events


def _nan_on_error(fn: Callable[[], float]) -> float:
    """A metric that is undefined on this sample (one class, no events, constant) is NaN."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(fn())
    except (ValueError, ZeroDivisionError):
        return float("nan")


def softmax_np(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Task:
    """How a slide model's outputs are trained (`loss`) and scored (`metrics`)."""

    name: ClassVar[str] = "base"
    primary: ClassVar[str] = ""  # the metric used for model selection (higher is better)

    def n_outputs(self, n_classes: int | None = None) -> int:
        raise NotImplementedError

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def metrics(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def prediction_columns(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS[name] = cls
        return cls

    return deco


def build_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


@register_task("classify")
class ClassifyTask(Task):
    """Targets are integer class labels; outputs are (N, n_classes) logits."""

    primary = "auc"

    def n_outputs(self, n_classes: int | None = None) -> int:
        if n_classes is None or n_classes < 2:
            raise ValueError("classification needs n_classes >= 2")
        return n_classes

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target.reshape(-1).long())

    def metrics(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        prob = softmax_np(outputs)
        y = np.asarray(targets).reshape(-1).astype(int)
        return {"accuracy": float((prob.argmax(1) == y).mean()), "auc": roc_auc(prob, y)}

    def prediction_columns(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
        prob = softmax_np(outputs)
        cols = {f"prob_{k}": prob[:, k] for k in range(prob.shape[1])}
        cols["predicted"] = prob.argmax(1)
        return cols


def roc_auc(prob: np.ndarray, y: np.ndarray) -> float:
    """Binary AUC on the positive-class probability; macro one-vs-rest AUC for > 2 classes."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    if prob.shape[1] == 2:
        return _nan_on_error(lambda: roc_auc_score(y, prob[:, 1]))
    labels = np.arange(prob.shape[1])
    return _nan_on_error(
        lambda: roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=labels)
    )


@register_task("regress")
class RegressTask(Task):
    """Targets are real numbers; the single output is the prediction."""

    primary = "spearman"

    def n_outputs(self, n_classes: int | None = None) -> int:
        return 1

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output.reshape(-1), target.reshape(-1).to(output.dtype))

    def metrics(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        from scipy.stats import spearmanr

        pred = np.asarray(outputs, dtype=np.float64).reshape(-1)
        y = np.asarray(targets, dtype=np.float64).reshape(-1)
        rho = _nan_on_error(lambda: spearmanr(pred, y).statistic)
        return {"spearman": rho, "mse": float(np.mean((pred - y) ** 2))}

    def prediction_columns(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
        return {"prediction": np.asarray(outputs).reshape(-1)}


@register_task("survival")
class SurvivalTask(Task):
    """Targets are (N, 2) [time, event]; the single output is a log-risk (higher = earlier)."""

    primary = "c_index"
    ties: ClassVar[str] = "efron"

    def n_outputs(self, n_classes: int | None = None) -> int:
        return 1

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        target = target.reshape(-1, 2)
        return cox_ph_loss(output.reshape(-1), target[:, 0], target[:, 1], ties=self.ties)

    def metrics(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        from lifelines.utils import concordance_index

        risk = np.asarray(outputs, dtype=np.float64).reshape(-1)
        t = np.asarray(targets, dtype=np.float64).reshape(-1, 2)
        c = _nan_on_error(lambda: concordance_index(t[:, 0], -risk, t[:, 1].astype(bool)))
        return {"c_index": c}

    def prediction_columns(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
        return {"risk": np.asarray(outputs).reshape(-1)}


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    outputs: np.ndarray,
    targets: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    stratify: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile 95% CI of ``metric_fn(outputs, targets)`` over `n` bootstrap resamples.

    Resamples where the metric is undefined (NaN or an error, e.g. a single class or no
    events) are skipped. `stratify` (one label per row) resamples within each stratum, which
    keeps class balance and avoids most undefined resamples. (nan, nan) if none is defined.
    """
    outputs, targets = np.asarray(outputs), np.asarray(targets)
    rng = np.random.default_rng(seed)
    n_rows = len(outputs)
    if stratify is None:
        strata = [np.arange(n_rows)]
    else:
        s = np.asarray(stratify).reshape(-1)
        strata = [np.flatnonzero(s == v) for v in np.unique(s)]
    values = []
    for _ in range(n):
        idx = np.concatenate([rng.choice(rows, size=len(rows), replace=True) for rows in strata])
        v = _nan_on_error(lambda idx=idx: metric_fn(outputs[idx], targets[idx]))
        if math.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
