"""A trained CodecNet -> the shipped weights folder (its files and decoder.npz's layout:
weights_folder.py, which decodes without torch; this module needs torch to write one).

Post-training quantisation: activation scales are calibrated on real crops at every level;
weights get per-output-channel power-of-two scales (exact.py). The fixed-point decoder differs
from the float one by far less than a grey level (measured and recorded at export).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ... import zoo
from .entropy import Tables
from .exact import IntLayer, frac_bits_for, quantize_layer
from .model import LOG_SCALE_MAX, LOG_SCALE_MIN, PIXEL_CENTRE, PIXEL_SPREAD, CodecNet
from .weights_folder import (
    CONFIG_FILE,
    ENCODER_FILE,
    FORMAT,
    GAIN_FRAC,
    QUALITY_STEPS,
    IntDecoder,
)

__all__ = ["CONFIG_FILE", "build_decoder", "calibrate", "export"]


@torch.no_grad()
def calibrate(net: CodecNet, crops: torch.Tensor) -> dict[str, list[float]]:
    """Peak |activation| entering and leaving every decoder layer, over all levels."""
    peaks: dict[str, list[float]] = {
        "hyper": [0.0] * (len(_convs(net.hyper_synthesis)) + 1),
        "synth": [0.0] * (len(_convs(net.synthesis)) + 1),
    }
    net.eval()
    for lv in range(net.cfg.levels):
        level = torch.full((len(crops),), lv, dtype=torch.long)
        g = net.gain(level)
        y = net.analysis(crops) * g
        h = _track(net.hyper_synthesis, torch.round(net.hyper_analysis(y)), peaks["hyper"])
        mu, _ = h.chunk(2, dim=1)
        _track(net.synthesis, (torch.round(y - mu) + mu) / g, peaks["synth"])
    net.train()
    return peaks


def _track(seq: torch.nn.Sequential, x: torch.Tensor, peaks: list[float]) -> torch.Tensor:
    """Run `seq`, raising `peaks` to the largest |value| entering it and leaving each ReLU and
    its last module; returns the output."""
    acts = [x]
    for mod in seq:
        x = mod(x)
        if isinstance(mod, torch.nn.ReLU) or mod is seq[-1]:
            acts.append(x)
    for i, a in enumerate(acts):
        peaks[i] = max(peaks[i], float(a.abs().max()))
    return x


def _convs(seq: torch.nn.Sequential) -> list[torch.nn.Module]:
    return [m for m in seq if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]


def _layer(
    conv: torch.nn.Module, in_frac: int, out_frac: int, relu: bool, shift: float = 0.0, **kw
) -> IntLayer:
    w = conv.weight.detach().double().numpy()
    b = conv.bias.detach().double().numpy() + shift
    if isinstance(conv, torch.nn.ConvTranspose2d):
        stride = conv.stride[0]
    else:  # 1x1 convolution (cout, cin, 1, 1) -> transposed layout (cin, cout, 1, 1)
        if conv.kernel_size != (1, 1):
            raise ValueError("only 1x1 convolutions are supported on the decoder side")
        w, stride = w.transpose(1, 0, 2, 3), 1
    return quantize_layer(w, b, stride, in_frac, out_frac, relu, **kw)


def build_decoder(net: CodecNet, peaks: dict[str, list[float]]) -> IntDecoder:
    """Integer layers, gains and tables (the contents of decoder.npz)."""
    hyper_fracs = [0] + [frac_bits_for(p) for p in peaks["hyper"][1:]]
    hyper_fracs[-1] = min(hyper_fracs[-1], 8)  # mu and log-scale: 8 fractional bits at most
    hyper_convs = _convs(net.hyper_synthesis)
    hyper = [
        _layer(c, hyper_fracs[i], hyper_fracs[i + 1], relu=i < len(hyper_convs) - 1)
        for i, c in enumerate(hyper_convs)
    ]
    synth_fracs = [frac_bits_for(p) for p in peaks["synth"][:-1]] + [0]
    synth_convs = _convs(net.synthesis)
    last = len(synth_convs) - 1
    synth = [
        _layer(
            c,
            synth_fracs[i],
            synth_fracs[i + 1],
            relu=i < last,
            clip=i < last,
            # the pixel un-centring (model.Affine) folded in: 255 * (v / spread + centre)
            out_gain=255.0 / PIXEL_SPREAD if i == last else 1.0,
            shift=PIXEL_CENTRE * PIXEL_SPREAD if i == last else 0.0,
        )  # fmt: skip
        for i, c in enumerate(synth_convs)
    ]
    mu_frac = hyper_fracs[-1]
    lmin, lmax = LOG_SCALE_MIN, LOG_SCALE_MAX
    tables = Tables.build(lmin, lmax, net.z_log_scale.detach().exp().double().numpy())
    step = (lmax - lmin) / (len(tables.scales) - 1)
    thresholds = np.floor((lmin + (np.arange(len(tables.scales) - 1) + 0.5) * step) * 2**mu_frac)
    inv_gain = np.round(np.exp(-net.log_gain.detach().double().numpy()) * 2**GAIN_FRAC)
    dec = IntDecoder(hyper, synth, mu_frac, synth_fracs[0], thresholds, inv_gain, lmin, lmax,
                     tables)  # fmt: skip
    dec.fast_layers()  # ValueError unless the fast decoder is provably exact with these weights
    return dec


def export(net: CodecNet, calib: torch.Tensor, out_dir: Path, record: dict) -> str:
    """Write the weights folder; return its weights hash (the zoo's: decoder + encoder)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    peaks = calibrate(net, calib)
    build_decoder(net, peaks).save(out_dir)
    enc_state = {
        k: v.detach().half().contiguous()
        for k, v in net.state_dict().items()
        if k.startswith(("analysis.", "hyper_analysis.", "log_gain", "z_log_scale"))
    }
    save_file(enc_state, str(out_dir / ENCODER_FILE))
    cfg = {"config": net.cfg.to_dict(), "calibration": peaks, "gain_frac": GAIN_FRAC,
           "quality_steps": QUALITY_STEPS, **record}  # fmt: skip
    (out_dir / CONFIG_FILE).write_text(json.dumps(cfg, indent=1))
    for p in out_dir.iterdir():
        p.chmod(0o644)
    return zoo.weights_sha256(out_dir, FORMAT)
