"""Losses the slide-level tasks train with that torch does not ship.

`cox_ph_loss`: the negative Cox partial log-likelihood (the loss of DeepSurv, Katzman et al.,
BMC Med Res Methodol 2018), with Breslow or Efron handling of tied event times.
"""

from __future__ import annotations

import math

import torch
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
