"""Export a training run of the learned codec (scripts/train_codec.py) as a shipped weights folder.

    python scripts/export_codec.py runs/codec -o src/slidepress/weights/codec-he-shallow
    python scripts/export_codec.py runs/codec -o OUT --precision float32
    python scripts/export_codec.py --requantize src/slidepress/weights/codec-he-shallow \
        -o src/slidepress/weights/codec-he-shallow-f32 --precision float32

Calibrates the fixed-point decoder on real crops (the training pools), writes decoder.npz,
encoder.safetensors and config.json (codecs/learned/export.py), then checks the folder as the
codec will use it: every level's real bytes per pixel and PSNR on the validation crops through
the integer decoder, next to the float model's, recorded in config.json ("export_check").
MODEL_CARD.md is written by hand from these numbers and the benchmark.

`--precision float32` gives every decoder layer fewer bits so that its proven worst partial
sum stays below 2^24 and the decoder runs it in float32 (export.fit_precision); the default
float64 is the format codec-he-shallow was exported in. `--requantize FOLDER` derives such a
folder from an exported one without the float model: its integer weights re-rounded
(export.requantize), the synthesis' per-channel clips calibrated on the same training crops
through the folder's own encoder and integer decoder; the check then sets the new folder's
bpp and PSNR next to the source folder's ("source_bpp", "source_psnr").
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from train_codec import data_pools  # noqa: E402  (same folder)

from slidepress import __version__
from slidepress.codecs.learned.export import (
    CONFIG_FILE,
    PRECISIONS,
    calibrate_channels,
    export,
    write_requantized,
)
from slidepress.codecs.learned.model import CodecConfig, CodecNet
from slidepress.codecs.learned.runtime import LearnedModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?",
                    help="training folder (best.pt, config.json, log.csv)")  # fmt: skip
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--checkpoint", default="best.pt")
    ap.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float64",
        help="float32: layers fitted to exact float32 products (faster decode)",
    )
    ap.add_argument(
        "--requantize",
        type=Path,
        metavar="FOLDER",
        help="re-round an exported weights folder instead of a training run",
    )
    a = ap.parse_args()
    if a.requantize is not None:
        requantize_folder(a.requantize, a.output, a.precision)
        return
    if a.run is None:
        ap.error("a training folder, or --requantize FOLDER")
    torch.manual_seed(0)
    cfg = CodecConfig.from_dict(json.loads((a.run / "config.json").read_text()))
    net = CodecNet(cfg)
    state = torch.load(a.run / a.checkpoint, weights_only=False, map_location="cpu")
    net.load_state_dict(state["model"])
    net.eval()
    with open(a.run / "log.csv") as f:
        log = list(csv.DictReader(f))
    sampler, val = data_pools(seed=7)
    calib = sampler.batch(192)
    record = {
        "training": {
            "steps": int(state["step"]),
            "wall_seconds": float(log[-1]["seconds"]) if log else None,
            "final_val_loss": float(state.get("val", math.nan)),
            "crop": int(calib.shape[-1]),
            "data": "PCam train (12,000 patches, 0.97 um/px), Kather 2016 (24 images), "
            "CMU-1-Small-Region.svs level 0; held out: shared/data/tiles, "
            "CropBreastSlide.tiff",
            "torch": torch.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        },
        "exported_by": f"slidepress {__version__}, {time.strftime('%Y-%m-%d')}",
    }
    h = export(net, calib, a.output, record, a.precision)
    check = export_check(net, LearnedModel(a.output), val)
    cfg_path = a.output / CONFIG_FILE
    doc = json.loads(cfg_path.read_text())
    doc["export_check"] = check
    cfg_path.write_text(json.dumps(doc, indent=1))
    print(f"weights {h[:16]} in {a.output}")
    for row in check:
        print("  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))


def requantize_folder(source: Path, out: Path, precision: str) -> None:
    """--requantize: the new folder, its channel peaks calibrated on the training crops the
    export calibrates on, and its check against the source folder on the validation crops."""
    torch.manual_seed(0)
    sampler, val = data_pools(seed=7)
    calib = _uint8(sampler.batch(192))
    channel_peaks = None
    if precision != "float64":
        peaks = calibrate_channels(LearnedModel(source), calib)
        channel_peaks = {"synth": peaks["synth"]}
    h = write_requantized(source, out, precision, channel_peaks=channel_peaks)
    tiles = _uint8(val)
    new, old = (rd_rows(LearnedModel(f), tiles) for f in (out, source))
    check = [{**n, "source_bpp": o["bpp"], "source_psnr": o["psnr"]}
             for n, o in zip(new, old, strict=True)]  # fmt: skip
    cfg_path = out / CONFIG_FILE
    doc = json.loads(cfg_path.read_text())
    doc["precision"]["requantized_by"] = f"slidepress {__version__}, {time.strftime('%Y-%m-%d')}"
    doc["export_check"] = check
    cfg_path.write_text(json.dumps(doc, indent=1))
    print(f"weights {h[:16]} in {out} ({precision}, from {source})")
    for row in check:
        print("  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))


def _uint8(crops: torch.Tensor) -> np.ndarray:
    return (crops.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def rd_rows(model: LearnedModel, tiles: np.ndarray) -> list[dict]:
    """Per level: real bpp and PSNR of a weights folder on uint8 tiles."""
    rows = []
    px = tiles.shape[0] * tiles.shape[1] * tiles.shape[2]
    for q in range(1, model.levels + 1):
        blobs = model.encode_batch(list(tiles), q)
        dec = np.stack(model.decode_batch(blobs)).astype(np.float64)
        mse = float(np.mean((dec - tiles) ** 2))
        rows.append({"quality": q, "bpp": 8 * sum(len(b) for b in blobs) / px,
                     "psnr": 10 * math.log10(255**2 / mse)})  # fmt: skip
    return rows


@torch.no_grad()
def export_check(net: CodecNet, model: LearnedModel, val: torch.Tensor) -> list[dict]:
    """Per level: real bpp and PSNR of the shipped (integer) decoder, and the float model's
    PSNR and estimated bpp, on the validation crops."""
    tiles = (val.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    rows = []
    for lv in range(net.cfg.levels):
        blobs = model.encode_batch(list(tiles), lv + 1)
        dec = np.stack(model.decode_batch(blobs)).astype(np.float64)
        mse = float(np.mean((dec - tiles) ** 2))
        out = net(x, torch.full((len(x),), lv))
        fmse = float(((out["x_hat"].clamp(0, 1) * 255).round() / 255 - x).pow(2).mean()) * 255**2
        px = tiles.shape[0] * tiles.shape[1] * tiles.shape[2]
        rows.append({
            "quality": lv + 1,
            "bpp": 8 * sum(len(b) for b in blobs) / px,
            "psnr": 10 * math.log10(255**2 / mse),
            "float_bpp_estimate": float(out["bits"].sum()) / px,
            "float_psnr": 10 * math.log10(255**2 / fmse),
        })  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
