"""Continue training the learned codec from what ships: a weights folder back to a float model,
and long resumable runs from it (issue 23).

The float training checkpoint of the shipped codec is lost; only its exported folder
(`codecs/learned/weights_folder.py`) exists. That folder still determines every parameter:

- encoder.safetensors (fp16): the analysis (GDN included), the hyper-analysis, the per-level
  gains and the hyper-latents' factorized prior (`z_log_scale`), loaded as float32;
- decoder.npz: the hyper-synthesis and synthesis in fixed point (`exact.IntLayer`). export.py
  only rounds: weight = w_int * 2^-w_exp per output channel, bias = b_int * 2^-(in_frac +
  w_exp) (activations keep their real scale: the calibration only picks in_frac/out_frac),
  the last synthesis layer scaled by 255 / PIXEL_SPREAD with PIXEL_CENTRE * PIXEL_SPREAD added
  to its bias (the pixel un-centring), 1x1 convolutions stored transposed. `folder_state`
  undoes exactly that, so the float decoder computes what the integer one does up to the
  integer one's activation rounding;
- the gains: the integer decoder and the runtime encoder both use decoder.npz's inverse gains
  (2^-GAIN_FRAC), so log_gain = -log(inv_gain * 2^-GAIN_FRAC) (the fp16 copy in
  encoder.safetensors differs by < 1e-3; the codec as shipped never reads it).

Nothing the model trains is left to re-initialise with the current model (`warm_start` lists
whatever a folder does not determine, e.g. a future architecture's extra parameters). Adam's
moments do not exist in a folder: a warm start begins with the 200-step learning-rate warm-up.

    python -m slidepress.training.codec_warmstart [FOLDER]   # float vs integer, per level

Long runs (`train_long`, `scripts/train_codec.py --init-from/--snapshot`,
`scripts/train_codec_long.sh`): resume the run folder's checkpoint.pt (exact), else rebuild it
from a committed snapshot (`scripts/snapshot_codec.py`, `training_state/codec/`), else warm
start from a folder. Every session appends a line to the run's sessions.jsonl.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import zoo
from ..codecs.learned.exact import IntLayer
from ..codecs.learned.model import PIXEL_CENTRE, PIXEL_SPREAD, CodecConfig, CodecNet
from ..codecs.learned.weights_folder import (
    ENCODER_FILE,
    GAIN_FRAC,
    IntDecoder,
    config_of,
)
from ..errors import UsageError
from .learned_codec import CodecTrainer, TrainSettings, evaluate
from .samplers import CropSampler

SHIPPED = zoo.shipped_path("codec-he-shallow")
REWARM = 200  # steps of learning-rate warm-up after Adam's moments were restarted
SESSIONS = "sessions.jsonl"


# -- the folder back to float parameters ---------------------------------------------------------
def unquantize(layer: IntLayer, out_gain: float = 1.0, shift: float = 0.0):
    """An `IntLayer` back to float64 weight (ConvTranspose2d layout (cin, cout, k, k)) and bias:
    the inverse of export.py's `quantize_layer(w, b + shift, ..., out_gain=out_gain)` (exact up
    to that rounding: re-exporting gives the same integers)."""
    w_exp = layer.w_exp.astype(np.float64)
    w = np.asarray(layer.weight, np.float64) * np.exp2(-w_exp) / out_gain  # (cin, k, k, cout)
    b = np.asarray(layer.bias, np.float64) * np.exp2(-(layer.in_frac + w_exp)) / out_gain - shift
    return w.transpose(0, 3, 1, 2), b


def _convs(seq: torch.nn.Sequential, prefix: str) -> list[tuple[str, torch.nn.Module]]:
    return [(f"{prefix}.{i}", m) for i, m in enumerate(seq)
            if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]  # fmt: skip


def _decoder_side(net: CodecNet, dec: IntDecoder) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for prefix, layers in (("hyper_synthesis", dec.hyper), ("synthesis", dec.synth)):
        convs = _convs(getattr(net, prefix), prefix)
        if len(convs) != len(layers):
            raise UsageError(f"{prefix}: {len(layers)} layers in decoder.npz, model has "
                             f"{len(convs)}")  # fmt: skip
        for i, ((name, conv), layer) in enumerate(zip(convs, layers, strict=True)):
            last = prefix == "synthesis" and i == len(layers) - 1
            w, b = unquantize(layer, out_gain=255.0 / PIXEL_SPREAD if last else 1.0,
                              shift=PIXEL_CENTRE * PIXEL_SPREAD if last else 0.0)  # fmt: skip
            if isinstance(conv, torch.nn.Conv2d):  # 1x1: stored as (cin, cout, 1, 1)
                w = w.transpose(1, 0, 2, 3)
                ok = conv.kernel_size == (1, 1) and layer.stride == 1
            else:
                ok = conv.stride[0] == layer.stride
            ok = ok and layer.relu == (i < len(layers) - 1)  # ReLU after all but the last
            if not ok or tuple(conv.weight.shape) != w.shape:
                raise UsageError(f"{name}: decoder.npz layer {i} does not fit the model "
                                 f"({w.shape} vs {tuple(conv.weight.shape)})")  # fmt: skip
            out[f"{name}.weight"] = torch.from_numpy(w).float()
            out[f"{name}.bias"] = torch.from_numpy(b).float()
    return out


def folder_state(folder: Path) -> tuple[CodecConfig, dict[str, torch.Tensor], dict[str, float]]:
    """(config, float parameters the folder determines, notes: numbers about the inversion)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = config_of(folder)
    net = CodecNet(cfg)
    dec = IntDecoder.load(folder)
    enc = {k: v.float() for k, v in load_file(str(folder / ENCODER_FILE)).items()}
    state = {k: v for k, v in enc.items() if k.startswith(("analysis.", "hyper_analysis."))}
    state.update(_decoder_side(net, dec))
    log_gain = torch.from_numpy(-np.log(dec.inv_gain * 2.0**-GAIN_FRAC)).float()
    notes = {}
    if "log_gain" in enc:
        notes["log_gain_fp16_max_diff"] = float((enc["log_gain"] - log_gain).abs().max())
    state["log_gain"] = log_gain
    if "z_log_scale" in enc:
        state["z_log_scale"] = enc["z_log_scale"]
    return cfg, state, notes


def warm_start(folder: Path = SHIPPED, log: Callable[[str], None] = print) -> CodecNet:
    """The float model of a shipped weights folder (module docstring); parameters the folder
    does not determine keep their initialisation and are listed in the message."""
    cfg, state, notes = folder_state(folder)
    net = CodecNet(cfg)
    own = net.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise UsageError(f"{folder}: parameters that do not fit {cfg.name}: {bad[:4]}")
    missing = net.load_state_dict(state, strict=False).missing_keys
    n = sum(v.numel() for k, v in own.items() if k not in missing)
    log(f"warm start from {folder}: {len(state)} tensors ({n:,} values) loaded"
        + "".join(f", {k} {v:.2g}" for k, v in notes.items()))  # fmt: skip
    log("re-initialised (not in the folder): " + (", ".join(missing) if missing else "none"))
    return net


# -- checks: the float model against the folder's integer decoder --------------------------------
def _uint8(val: torch.Tensor) -> np.ndarray:
    return (val.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def synthesis_pixels(net: CodecNet, model, tiles: np.ndarray, quality: int):
    """Tiles (N, H, W, 3) uint8 (H, W multiples of 32) through the folder's encoder side, then
    the same symbols through the integer decoder and through `net`'s float decoder.
    Returns (integer pixels, float pixels rounded to uint8, max |mu float - mu integer|)."""
    q16 = model.quality_step(quality)
    ig = model.inverse_gain(q16) * 2.0 ** -(GAIN_FRAC + 4)  # 1 / gain
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    y = net.analysis(x) / torch.from_numpy(ig).float()[None, :, None, None]
    z = net.hyper_analysis(y).round()
    rz = model.tables.z_radius
    z_sym = np.clip(z.permute(0, 2, 3, 1).numpy().astype(np.int64), -rz, rz)
    mu_i, idx = model.entropy_params(z_sym)
    mu = mu_i * 2.0**-model.mu_frac
    y_g = y.permute(0, 2, 3, 1).double().numpy()
    r = model.tables.y_radius[idx]
    y_sym = np.clip(np.round(y_g - mu), -r, r).astype(np.int64)
    int_px = model.synthesize(y_sym, mu_i, q16)
    mu_f, _ = net.entropy_params(torch.from_numpy(z_sym).permute(0, 3, 1, 2).float())
    mu_err = float(np.abs(mu_f.permute(0, 2, 3, 1).double().numpy() - mu).max())
    y_hat = torch.from_numpy((y_sym + mu) * ig).permute(0, 3, 1, 2).float()
    fl = net.synthesis(y_hat).clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    return int_px, fl, mu_err


@torch.no_grad()
def compare_levels(net: CodecNet, folder: Path, val: torch.Tensor) -> list[dict]:
    """Per level on crops `val`: the folder's real bpp and PSNR (integer decoder, real bytes),
    the float model's PSNR and estimated bpp (as scripts/export_codec.py's export_check), and
    the largest pixel difference between the float and the integer synthesis of the same
    symbols."""
    from ..codecs.learned.runtime import LearnedModel

    model = LearnedModel(folder)
    tiles = _uint8(val)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    px = tiles.shape[0] * tiles.shape[1] * tiles.shape[2]
    net.eval()
    rows = []
    for lv in range(net.cfg.levels):
        blobs = model.encode_batch(list(tiles), lv + 1)
        dec = np.stack(model.decode_batch(blobs)).astype(np.float64)
        out = net(x, torch.full((len(x),), lv))
        fmse = float(((out["x_hat"].clamp(0, 1) * 255).round() / 255 - x).pow(2).mean()) * 255**2
        ip, fp, mu_err = synthesis_pixels(net, model, tiles, lv + 1)
        rows.append({
            "quality": lv + 1,
            "bpp": 8 * sum(len(b) for b in blobs) / px,
            "psnr": 10 * math.log10(255**2 / float(np.mean((dec - tiles) ** 2))),
            "float_bpp_estimate": float(out["bits"].sum()) / px,
            "float_psnr": 10 * math.log10(255**2 / fmse),
            "synth_max_abs_diff": int(np.abs(ip.astype(int) - fp).max()),
            "mu_max_abs_diff": mu_err,
        })  # fmt: skip
    net.train()
    return rows


# -- long runs -------------------------------------------------------------------------------------
class LongCodecTrainer(CodecTrainer):
    """`CodecTrainer` whose learning rate warms up again for `REWARM` steps after Adam's moments
    were restarted mid-run (a resume from a snapshot that left them out)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.rewarm_from: int | None = None

    def lr_at(self, step: int, progress: float) -> float:
        lr = super().lr_at(step, progress)
        if self.rewarm_from is not None and step < self.rewarm_from + REWARM:
            lr *= (step - self.rewarm_from + 1) / REWARM
        return lr

    def state_dict(self) -> dict:
        return {"best": self.best, "rewarm_from": self.rewarm_from}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.rewarm_from = state.get("rewarm_from")


def snapshot_restore(trainer: LongCodecTrainer, snap: Path, run_dir: Path) -> tuple[int, bool]:
    """Rebuild run_dir's checkpoint.pt, best.pt, log.csv and sessions.jsonl from a committed
    snapshot (scripts/snapshot_codec.py); returns the step it resumes at and whether Adam's
    moments were in it."""
    from .checkpoint import restore_rng, save_checkpoint
    from .loop import Progress

    data = torch.load(snap / "state.pt", map_location="cpu", weights_only=False)
    if data["config"] != trainer.config():
        raise UsageError(f"{snap}: a snapshot of another model than this run's")
    trainer.net.load_state_dict({k: v.float() for k, v in data["models"]["net"].items()})
    trainer.load_state_dict(data["state"])
    adam = data.get("optimizers", {}).get("adam")
    if adam is not None:  # moments saved (bfloat16): back to float32
        for st in adam["state"].values():
            for k, v in st.items():
                if k != "step" and torch.is_tensor(v):
                    st[k] = v.float()
        trainer.opt.load_state_dict(adam)
    else:  # fresh moments: warm up again
        trainer.rewarm_from = data["step"]
    restore_rng(data["rng"], trainer.generators)
    p = Progress(data["step"], data["seconds"], **data["log"])
    if (snap / "best.safetensors").is_file():
        from safetensors.torch import load_file

        best = {k: v.float() for k, v in load_file(str(snap / "best.safetensors")).items()}
        note = json.loads((snap / "SNAPSHOT.json").read_text()).get("best", {})
    else:  # left out of the snapshot: the current weights stand in
        best, note = trainer.net.state_dict(), {"step": data["step"], "val": trainer.best}
    torch.save({"model": best, "step": note.get("step"), "val": note.get("val")},
               run_dir / "best.pt")  # fmt: skip
    save_checkpoint(run_dir / "checkpoint.pt", trainer, p)
    for f in ("log.csv", SESSIONS):
        if (snap / f).is_file():
            shutil.copy(snap / f, run_dir / f)
    return p.step, adam is not None


def train_long(
    cfg: CodecConfig,
    sampler: CropSampler,
    val: torch.Tensor,
    out_dir: Path,
    s: TrainSettings,
    *,
    resume: bool = False,
    init_from: Path | None = None,
    snapshot: Path | None = None,
    record: dict | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
):
    """Train the codec into `out_dir`: resume its checkpoint (`resume`), else rebuild it from
    `snapshot`/state.pt when there is one, else warm start from the weights folder
    `init_from`. `record` (data, command, ...) goes into sessions.jsonl with the session's
    start."""
    from .loop import fit
    from .run import Budget, Run, prepare_torch

    out_dir = Path(out_dir)
    source = "checkpoint"
    if not resume and snapshot is not None and (Path(snapshot) / "state.pt").is_file():
        source = f"snapshot {snapshot}"
    elif not resume:
        if init_from is None:
            raise UsageError("nothing to start from: pass a weights folder or a snapshot")
        source = f"warm start {init_from}"
    run = Run(out_dir, resume=resume)
    prepare_torch(s.seed, s.threads)
    trainer = LongCodecTrainer(cfg, sampler, val, s, run)
    if source.startswith("snapshot"):
        step, adam = snapshot_restore(trainer, Path(snapshot), out_dir)
        log(f"restored {out_dir} from {source} at step {step} "
            + ("(with Adam's moments)" if adam else f"(Adam's moments restarted, {REWARM}-step "
               "learning-rate warm-up)"))  # fmt: skip
        run.resume = True
    elif source.startswith("warm"):
        net = warm_start(Path(init_from), log=log)
        trainer.net.load_state_dict(net.state_dict())
        v = evaluate(trainer.net, trainer.val)
        trainer.best = v  # the shipped model is the one to beat
        torch.save({"model": trainer.net.state_dict(), "step": 0, "val": v}, run.path("best.pt"))
        log(f"warm-started model: validation loss {v:.4f}")
    run.write_config(cfg.to_dict())
    with open(run.path(SESSIONS), "a") as f:
        f.write(json.dumps({
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from": source,
            "machine": f"{platform.node()} {platform.machine()}",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "lr": s.lr, "lr_final": s.lr_final, "steps": s.steps, "batch": s.batch,
            **(record or {}),
        }) + "\n")  # fmt: skip
    budget = Budget(s.steps, s.minutes)
    return fit(trainer, run, budget, log_every=s.checkpoint_every, stop_after=stop_after, log=log)


def main() -> None:
    import argparse

    from .samplers import SHARED, he_mix

    ap = argparse.ArgumentParser(description="float model of a weights folder vs its decoder")
    ap.add_argument("folder", nargs="?", type=Path, default=SHIPPED)
    ap.add_argument("--shared", type=Path, default=SHARED)
    a = ap.parse_args()
    torch.manual_seed(0)
    net = warm_start(a.folder)
    _, val = he_mix(a.shared, pcam_limit=1, val_crops=96)  # export_check's validation crops
    shipped = {r["quality"]: r for r in json.loads((a.folder / "config.json").read_text())
               .get("export_check", [])}  # fmt: skip
    print(
        "q  int_bpp  int_psnr  float_psnr  d(float-int)  shipped_float_psnr  float_bpp "
        "shipped_float_bpp  synth_maxdiff  mu_maxdiff"
    )
    for r in compare_levels(net, a.folder, val):
        sh = shipped.get(r["quality"], {})
        print(
            f"{r['quality']}  {r['bpp']:.4f}  {r['psnr']:.4f}  {r['float_psnr']:.4f}  "
            f"{r['float_psnr'] - r['psnr']:+.4f}  {sh.get('float_psnr', math.nan):.4f}  "
            f"{r['float_bpp_estimate']:.4f}  {sh.get('float_bpp_estimate', math.nan):.4f}  "
            f"{r['synth_max_abs_diff']}  {r['mu_max_abs_diff']:.4g}"
        )


if __name__ == "__main__":
    main()
