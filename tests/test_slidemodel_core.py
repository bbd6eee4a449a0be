"""Slide models on NIC grids: the Cox loss equals lifelines' partial likelihood, the models take
any grid size and can learn a planted lesion, Grad-CAM points at it, task metrics are right."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from slidepress.errors import UsageError  # noqa: E402
from slidepress.metrics.stats import bootstrap_ci  # noqa: E402
from slidepress.slidemodel import (  # noqa: E402
    ABMIL,
    NICCNN,
    SLIDE_MODELS,
    TASKS,
    build_slide_model,
    build_task,
    cox_ph_loss,
    grad_cam,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny convolutions on a shared 2-core machine: 2 threads were up to 100x slower when busy
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- Cox partial likelihood


def _survival_data(n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.integers(1, 8, size=n).astype(float)  # 7 distinct times: many ties
    e = rng.random(n) < 0.7
    return x, t, e


def _neg_loglik_loop(risk: np.ndarray, t: np.ndarray, e: np.ndarray, ties: str) -> float:
    """Textbook Breslow / Efron partial likelihood, one distinct event time at a time."""
    ll = 0.0
    for tj in np.unique(t[e]):
        dead = (t == tj) & e
        d = dead.sum()
        s = np.exp(risk[t >= tj]).sum()
        tied = np.exp(risk[dead]).sum()
        ll += risk[dead].sum()
        for k in range(d):
            ll -= np.log(s - (k / d) * tied) if ties == "efron" else np.log(s)
    return -ll


def _loss(risk, t, e, ties):
    return cox_ph_loss(torch.as_tensor(risk), torch.as_tensor(t), torch.as_tensor(e), ties)


def test_cox_efron_equals_lifelines_partial_likelihood():
    pd = pytest.importorskip("pandas")
    from lifelines import CoxPHFitter

    x, t, e = _survival_data()
    df = pd.DataFrame({"x": x, "T": t, "E": e.astype(int)})
    cph = CoxPHFitter().fit(df, "T", "E")  # Efron ties, no penalizer
    risk = torch.tensor(cph.params_["x"] * x, dtype=torch.float64)
    loss = cox_ph_loss(risk, torch.tensor(t), torch.tensor(e), ties="efron")
    assert loss.item() * e.sum() == pytest.approx(-cph.log_likelihood_, rel=1e-6)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_matches_loop_reference(ties):
    x, t, e = _survival_data(seed=1)
    risk = np.random.default_rng(2).normal(size=x.size) * 2
    got = _loss(risk, t, e, ties).item()
    assert got * e.sum() == pytest.approx(_neg_loglik_loop(risk, t, e, ties), rel=1e-9)


def test_cox_ties_matter_and_vanish_without_ties():
    x, t, e = _survival_data(seed=3)
    risk = x.copy()
    assert _loss(risk, t, e, "efron").item() != pytest.approx(_loss(risk, t, e, "breslow").item())
    t_unique = t + np.arange(t.size) * 1e-3  # break every tie
    a, b = _loss(risk, t_unique, e, "efron").item(), _loss(risk, t_unique, e, "breslow").item()
    assert a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_prefers_correct_ordering_and_is_stable(ties):
    t = np.arange(1.0, 21.0)
    e = np.ones(20, dtype=bool)
    good = -t  # earlier death = higher risk
    assert _loss(good, t, e, ties).item() < _loss(-good, t, e, ties).item()
    # invariant to a shift of all risks, even a huge one (logsumexp, no overflow)
    _, tt, ee = _survival_data(seed=4)
    r = np.random.default_rng(5).normal(size=tt.size)
    base = _loss(r, tt, ee, ties).item()
    shifted = _loss(r + 1000.0, tt, ee, ties)
    assert math.isfinite(shifted.item())
    assert shifted.item() == pytest.approx(base, rel=1e-9)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_all_censored_is_zero_but_differentiable(ties):
    risk = torch.randn(6, requires_grad=True)
    loss = cox_ph_loss(risk, torch.arange(6.0), torch.zeros(6, dtype=torch.bool), ties)
    assert loss.item() == 0.0
    loss.backward()
    assert risk.grad is not None and torch.all(risk.grad == 0)


def test_cox_gradient_flows_float32():
    _, t, e = _survival_data()
    risk = torch.zeros(t.size, requires_grad=True)
    cox_ph_loss(risk, torch.tensor(t), torch.tensor(e)).backward()
    assert torch.isfinite(risk.grad).all() and risk.grad.abs().sum() > 0


# ---------------------------------------------------------------- models


def _planted(n: int, seed: int, c: int = 8, size: int = 32, amp: float = 3.0, noise: float = 0.25):
    """Tissue-like codes (small noise); class 1 has a bright 4x4 'lesion' in channel 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, size, size, generator=g) * noise
    y = torch.arange(n) % 2
    corners = []
    for i in range(n):
        r, col = torch.randint(0, size - 4, (2,), generator=g).tolist()
        corners.append((r, col))
        if y[i] == 1:
            x[i, 0, r : r + 4, col : col + 4] += amp
    return x, y, corners


def _overfit(model, steps: int = 60, seed: int = 0):
    torch.manual_seed(seed)
    x, y, corners = _planted(8, seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def tiny_cnn():
    # 3 blocks (strides 2, 1, 1): on a 32x32 grid the 8-block net shrinks to 1x1 and, with 8
    # grids, memorises the noise instead of learning the lesion; the shallow one is a local
    # detector + global max pool, which is what Grad-CAM must find.
    torch.manual_seed(0)
    model = NICCNN(8, 2, width=16, n_layers=3)
    return model, _overfit(model)


@pytest.fixture(scope="module")
def tiny_abmil():
    torch.manual_seed(0)
    model = ABMIL(8, 2, hidden=16, attention=16)
    return model, _overfit(model)


def test_registry():
    assert {"nic-cnn", "abmil"} <= set(SLIDE_MODELS)
    assert isinstance(build_slide_model("nic-cnn", 4, 3, width=8), NICCNN)
    assert isinstance(build_slide_model("abmil", 4, 1), ABMIL)
    with pytest.raises(UsageError, match="unknown slide model 'nope'; choose from nic-cnn, abmil"):
        build_slide_model("nope", 4, 2)


@pytest.mark.parametrize("name", ["nic-cnn", "abmil"])
@pytest.mark.parametrize("hw", [(64, 64), (17, 23), (5, 7), (1, 1)])
def test_output_shape_any_grid_size(name, hw):
    torch.manual_seed(0)
    model = build_slide_model(name, 16, 3)
    x = torch.randn(2, 16, *hw)
    model.train()
    assert model(x).shape == (2, 3)
    model.eval()
    with torch.no_grad():
        assert model(x, torch.ones(2, *hw, dtype=torch.bool)).shape == (2, 3)
        assert model(x[:1]).shape == (1, 3)


def test_nic_cnn_architecture():
    model = NICCNN(16, 2)
    blocks = list(model.blocks)
    assert len(blocks) == 8
    assert [b.depthwise.stride[0] for b in blocks] == [2, 2, 2, 2, 2, 2, 1, 1]
    for i, b in enumerate(blocks):
        c_in = 16 if i == 0 else 128
        assert b.depthwise.kernel_size == (3, 3) and b.depthwise.groups == c_in
        assert b.depthwise.padding == (1, 1)
        assert b.pointwise.kernel_size == (1, 1) and b.pointwise.out_channels == 128
        assert isinstance(b.bn, torch.nn.BatchNorm2d)
        assert isinstance(b.drop, torch.nn.Dropout2d) and b.drop.p == 0.2
    assert model.cam_layer is blocks[0]
    assert isinstance(model.dense[1], torch.nn.BatchNorm1d) and model.dense[0].out_features == 128
    assert model.head.in_features == 128 and model.head.out_features == 2
    assert NICCNN.l2 == 1e-5
    with pytest.raises(ValueError):
        NICCNN(16, 2, pool="sum")


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_nic_cnn_mask_hides_background(pool):
    torch.manual_seed(0)
    model = NICCNN(4, 2, width=8, pool=pool).eval()
    x = torch.randn(1, 4, 12, 12)
    mask = torch.zeros(1, 12, 12, dtype=torch.bool)
    mask[:, 3:9, 2:10] = True
    clean = x * mask
    with torch.no_grad():
        assert torch.allclose(model(x, mask), model(clean), atol=1e-6)


@pytest.mark.parametrize("n_layers", [8, 3])
def test_nic_cnn_overfits_planted_lesion(n_layers):
    torch.manual_seed(0)
    loss, acc = _overfit(NICCNN(8, 2, width=16, n_layers=n_layers))
    assert acc == 1.0 and loss < 0.1


def test_abmil_attention_respects_mask():
    torch.manual_seed(0)
    model = ABMIL(6, 2, hidden=8, attention=8).eval()
    x = torch.randn(3, 6, 5, 7)
    mask = torch.rand(3, 5, 7) > 0.5
    mask[2] = False  # a slide without tissue: attention falls back to every cell
    with torch.no_grad():
        model(x, mask)
    a = model.last_attention
    assert a.shape == (3, 5, 7)
    for i in range(2):
        assert a[i][mask[i]].sum().item() == pytest.approx(1.0, abs=1e-5)
        assert torch.all(a[i][~mask[i]] == 0)
    assert torch.all(a[2] > 0)
    assert a[2].sum().item() == pytest.approx(1.0, abs=1e-5)

    # no mask: background = all-zero cells
    x[:, :, :2] = 0
    with torch.no_grad():
        model(x)
    assert torch.all(model.last_attention[:, :2] == 0)
    assert torch.allclose(model.last_attention.sum(dim=(1, 2)), torch.ones(3))


def test_abmil_overfits_planted_lesion(tiny_abmil):
    model, (loss, acc) = tiny_abmil
    assert acc == 1.0 and loss < 0.1
    assert isinstance(model.cam_layer[0], torch.nn.Conv2d)


# ---------------------------------------------------------------- Grad-CAM


def _near(rc, corner, tol: int = 2) -> bool:
    (r, c), (r0, c0) = rc, corner
    return r0 - tol <= r <= r0 + 3 + tol and c0 - tol <= c <= c0 + 3 + tol


@pytest.mark.parametrize("fixture", ["tiny_cnn", "tiny_abmil"])
def test_grad_cam_finds_planted_lesion(fixture, request):
    model, (loss, acc) = request.getfixturevalue(fixture)
    assert acc == 1.0 and loss < 0.1
    x, y, corners = _planted(8, seed=1000)  # unseen grids
    hits = []
    for i in np.flatnonzero(y.numpy() == 1):
        cam = grad_cam(model, x[i : i + 1])
        assert cam.shape == (32, 32) and cam.dtype == np.float32
        assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
        hits.append(_near(np.unravel_index(cam.argmax(), cam.shape), corners[i]))
    assert sum(hits) >= 3, hits


def test_grad_cam_mask_state_and_hooks(tiny_cnn):
    model, _ = tiny_cnn
    x = torch.randn(1, 8, 9, 13)
    mask = torch.zeros(9, 13, dtype=torch.bool)
    mask[2:7, 3:11] = True
    grads_before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    for training in (True, False):
        model.train(training)
        cam = grad_cam(model, x, mask=mask, target=1)
        assert model.training is training
        assert cam.shape == (9, 13)
        assert np.all(cam[~mask.numpy()] == 0) and 0 <= cam.min() and cam.max() <= 1
    assert not model.cam_layer._forward_hooks and not model.cam_layer._backward_hooks
    for p, g in zip(model.parameters(), grads_before, strict=True):  # autograd.grad only
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    # nothing to explain: all-zero map, no NaN
    empty = grad_cam(model, x, mask=np.zeros((9, 13), dtype=bool))
    assert np.all(empty == 0)


def test_grad_cam_single_output_and_frozen_model():
    torch.manual_seed(0)
    model = build_slide_model("nic-cnn", 4, 1, width=8)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # the caller's no_grad must not break it
        cam = grad_cam(model, torch.randn(1, 4, 20, 16))
    assert cam.shape == (20, 16) and np.isfinite(cam).all()
    with pytest.raises(ValueError):
        grad_cam(model, torch.randn(2, 4, 20, 16))


# ---------------------------------------------------------------- tasks and metrics


def test_task_registry_and_outputs():
    assert set(TASKS) == {"classify", "regress", "survival"}
    assert build_task("classify").n_outputs(3) == 3
    assert build_task("regress").n_outputs(None) == 1
    assert build_task("survival").n_outputs() == 1
    primaries = [build_task(n).primary for n in ("classify", "regress", "survival")]
    assert primaries == ["auc", "spearman", "c_index"]
    with pytest.raises(UsageError, match="unknown task 'segment'; choose from classify, regress"):
        build_task("segment")


def test_classify_task():
    task = build_task("classify")
    logits = np.array([[2.0, -1.0], [1.5, 0.0], [-1.0, 3.0], [0.2, 0.5]])
    y = np.array([0, 0, 1, 1])
    m = task.metrics(logits, y)
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0
    assert task.metrics(logits, np.array([1, 1, 0, 0]))["auc"] == 0.0
    assert math.isnan(task.metrics(logits, np.zeros(4, dtype=int))["auc"])
    three = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 5
    assert task.metrics(three, np.array([0, 1, 2, 0, 1, 2]))["auc"] == 1.0
    cols = task.prediction_columns(logits)
    assert set(cols) == {"prob_0", "prob_1", "predicted"}
    assert np.allclose(cols["prob_0"] + cols["prob_1"], 1)
    assert list(cols["predicted"]) == [0, 0, 1, 1]
    out, target = torch.tensor(logits), torch.tensor(y)
    assert task.loss(out, target).item() == pytest.approx(F.cross_entropy(out, target).item())


def test_regress_task():
    task = build_task("regress")
    y = np.array([0.1, 0.5, 0.2, 0.9, 0.4])
    m = task.metrics((y * 3 + 1)[:, None], y)  # monotonic: rho 1, but not equal
    assert m["spearman"] == pytest.approx(1.0) and m["mse"] > 0
    assert task.metrics(y, y)["mse"] == 0.0
    assert list(task.prediction_columns(y[:, None])) == ["prediction"]
    out = torch.tensor(y[:, None] + 1)
    assert task.loss(out, torch.tensor(y)).item() == pytest.approx(1.0)


def test_survival_task():
    task = build_task("survival")
    t = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    e = np.array([1, 1, 0, 1, 1, 0])
    target = np.stack([t, e], axis=1)
    risk = -t  # earlier event = higher risk
    assert task.metrics(risk[:, None], target)["c_index"] == 1.0
    assert task.metrics(-risk, target)["c_index"] == 0.0
    assert list(task.prediction_columns(risk)) == ["risk"]
    got = task.loss(torch.tensor(risk[:, None]), torch.tensor(target)).item()
    assert got == pytest.approx(_neg_loglik_loop(risk, t, e.astype(bool), "efron") / e.sum())


def test_bootstrap_ci_brackets_point_estimate():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    logits = np.stack([np.zeros(40), y + rng.normal(size=40)], axis=1)
    task = build_task("classify")

    def auc(t, o):  # truth first, as metrics.stats takes it
        return task.metrics(o, t)["auc"]

    point = auc(y, logits)
    low, high = bootstrap_ci(auc, y, logits, n=200, seed=0)
    assert low <= point <= high and low < high
    assert (low, high) == bootstrap_ci(auc, y, logits, n=200, seed=0)  # seeded
    slow, shigh = bootstrap_ci(auc, y, logits, n=200, seed=1, stratify=y)
    assert slow <= point <= shigh

    # tiny sample: resamples with one class are skipped, not fatal
    low, high = bootstrap_ci(auc, y[[0, 1, 38, 39]], logits[[0, 1, 38, 39]], n=50)
    assert math.isfinite(low) and low <= high
