"""Autoencoder bundles: the model (ours, or a diffusers AutoencoderKL / AutoencoderDC loaded with
`from_pretrained`), its quantizers, its identity (name, version, weights hash).

A bundle is a folder:

    pathae.json       {"format": "slidepress-pathae/1", "name", "version", "kind", ...}
    quantizers.npz    int8 scale + K-means codebooks + entropy tables (quantize.Quantizers)
    model.safetensors (kind "pathae": our AE, fp16) or
    model/            (kind "diffusers": a `save_pretrained` folder) or "source" in pathae.json
                      (a local folder or a hub id, loaded with `from_pretrained`)

The weights hash (the zoo's: SHA-256 over the names and bytes of the model's weight files and
quantizers.npz) goes into every container, which then refuses to decode with other weights
(store/manifest.py, same_model).
The hub is only reached when a source is a hub id and HF_HUB_OFFLINE is unset; a local folder
never touches it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ... import zoo
from ...errors import CodecError
from .quantize import Quantizers

BUNDLE = zoo.FORMATS["autoencoder"]
FORMAT = BUNDLE.tag  # "slidepress-pathae/1", in pathae.json
META_FILE, QUANT_FILE, PATHAE_FILE, DIFFUSERS_DIR = (
    "pathae.json", "quantizers.npz", "model.safetensors", "model",
)  # fmt: skip
DIFFUSERS_CLASSES = ("AutoencoderKL", "AutoencoderDC")
DEFAULT_KS = (16, 64, 256, 1024, 4096)
_BUNDLES: dict[str, Bundle] = {}
_LOCK = threading.Lock()


def _diffusers_class(name: str) -> Any:
    if name not in DIFFUSERS_CLASSES:
        raise CodecError(
            f"autoencoder class {name!r} not supported: {', '.join(DIFFUSERS_CLASSES)}"
        )
    import diffusers

    return getattr(diffusers, name)


def diffusers_class_of(source: str | Path) -> str:
    """The `_class_name` of a local diffusers folder's config.json (or of a cached hub id)."""
    path = Path(source)
    if not path.is_dir():
        path = resolve_source(source)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CodecError(f"{source}: not a diffusers model folder ({e})") from None
    return str(cfg.get("_class_name"))


def resolve_source(source: str | Path) -> Path:
    """A local folder as is; a hub id through the local cache (or the hub, when allowed)."""
    path = Path(source)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source)))
    except Exception as e:  # offline, unknown id, no cache
        raise CodecError(f"autoencoder {source!r}: not a local folder and not available from "
                         f"the hub or its cache ({type(e).__name__}: {e})") from None  # fmt: skip


def load_diffusers(source: str | Path, class_name: str | None = None) -> Any:
    """`AutoencoderKL/DC.from_pretrained(local_dir_or_id)`, in eval mode, float32."""
    cls = _diffusers_class(class_name or diffusers_class_of(source))
    try:
        model = cls.from_pretrained(str(source))
    except Exception as e:
        raise CodecError(f"autoencoder {source!r}: from_pretrained failed ({e})") from None
    return model.float().eval()


def weights_hash(files: list[Path]) -> str:
    """A bundle's hash from its files (model weights, then quantizers.npz), as the zoo hashes
    bundles: each file's name and bytes, in the order given."""
    return zoo.sha256_files(files, named=BUNDLE.named)


_weight_files = zoo.diffusers_files  # the name codecs/autoencoder/export.py uses


class Autoencoder:
    """One interface over our AE and the diffusers ones: pixels in [0, 1] <-> float latents."""

    def __init__(self, net: Any, kind: str):
        self.net, self.kind = net, kind
        if kind == "pathae":
            self.stride, self.channels = net.stride, net.latent_channels
        elif kind == "AutoencoderKL":
            self.stride = 2 ** (len(net.config.block_out_channels) - 1)
            self.channels = int(net.config.latent_channels)
        else:  # AutoencoderDC
            self.stride = 2 ** (len(net.config.encoder_block_out_channels) - 1)
            self.channels = int(net.config.latent_channels)

    def encode(self, x: Any) -> Any:
        """(N, 3, H, W) float in [0, 1] (H, W multiples of `stride`) -> (N, C, H/s, W/s)."""
        if self.kind == "pathae":
            return self.net.encode(x)
        enc = self.net.encode(x * 2 - 1)
        return enc.latent_dist.mode() if self.kind == "AutoencoderKL" else enc.latent

    def decode(self, z: Any) -> Any:
        if self.kind == "pathae":
            return self.net.decode(z)
        return self.net.decode(z).sample * 0.5 + 0.5

    def decoder_modules(self) -> list:
        """What decoder-only fine-tuning trains (the rest stays frozen)."""
        if self.kind == "pathae":
            return [self.net.decoder]
        if self.kind == "AutoencoderKL":
            return [self.net.decoder, self.net.post_quant_conv]
        return [self.net.decoder]


@dataclass
class Bundle:
    """A loaded bundle: the autoencoder, its quantizers and its identity."""

    folder: Path
    meta: dict[str, Any]
    ae: Autoencoder
    quantizers: Quantizers
    weights_sha256: str
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def version(self) -> int:
        return int(self.meta.get("version", 1))


def read_meta(folder: Path) -> dict[str, Any]:
    """pathae.json, checked for its format (CodecError otherwise)."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError) as e:
        raise CodecError(f"{folder}: not an autoencoder bundle ({e})") from None
    if meta.get("format") != FORMAT:
        raise CodecError(
            f"{folder / META_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}"
        )
    return meta


def _load_net(folder: Path, meta: dict[str, Any]) -> tuple[Autoencoder, Path | None]:
    """The network, and the folder its weights came from when that is a hub id's snapshot."""
    import torch

    torch.set_flush_denormal(True)
    if meta["kind"] == "pathae":
        from safetensors.torch import load_file

        from .model import AEConfig, PathAENet

        net = PathAENet(AEConfig.from_dict(meta["arch"]))
        state = load_file(str(folder / PATHAE_FILE))
        net.load_state_dict({k: v.float() for k, v in state.items()})
        return Autoencoder(net.eval(), "pathae"), None
    if meta["kind"] != "diffusers":
        raise CodecError(f"{folder}: unknown autoencoder kind {meta['kind']!r}")
    source = meta.get("source") or str(folder / DIFFUSERS_DIR)
    hub = None if Path(source).is_dir() else resolve_source(source)
    net = load_diffusers(source, meta.get("class"))
    return Autoencoder(net, type(net).__name__), hub


def load_bundle(folder: str | Path) -> Bundle:
    """One Bundle per folder per process (thread-safe)."""
    folder = Path(folder).resolve()
    key = str(folder)
    with _LOCK:
        if key not in _BUNDLES:
            meta = read_meta(folder)
            if not (folder / QUANT_FILE).is_file():
                raise CodecError(f"{folder}: no {QUANT_FILE}")
            ae, hub = _load_net(folder, meta)
            sha = (zoo.weights_sha256(folder, BUNDLE) if hub is None
                   else weights_hash([*zoo.diffusers_files(hub), folder / QUANT_FILE]))  # fmt: skip
            _BUNDLES[key] = Bundle(folder, meta, ae, Quantizers.load(folder / QUANT_FILE), sha)
        return _BUNDLES[key]


def clear_cache() -> None:
    """Forget loaded bundles (a test that edits weights in place)."""
    with _LOCK:
        _BUNDLES.clear()


# -- writing bundles ------------------------------------------------------------------------


def latents_of(ae: Autoencoder, crops: Any, batch: int = 32) -> np.ndarray:
    """(N, 3, H, W) float crops in [0, 1] -> (N, C, h, w) float32 latents."""
    import torch

    with torch.inference_mode():
        return np.concatenate(
            [ae.encode(crops[i : i + batch]).float().numpy() for i in range(0, len(crops), batch)]
        )


def write_bundle_files(
    out: Path, meta: dict[str, Any], ae: Autoencoder, crops: Any,
    ks: tuple[int, ...] = DEFAULT_KS, dim: int = 4,
    seed: int = 0,
) -> Quantizers:  # fmt: skip
    """Fit the quantizers on the latents of `crops`; write quantizers.npz and pathae.json."""
    lat = latents_of(ae, crops)
    dim = dim if ae.channels % dim == 0 else ae.channels
    n_vec = lat.size // dim
    q = Quantizers.fit(lat, tuple(k for k in ks if k <= n_vec), dim, seed)
    q.save(out / QUANT_FILE)
    meta = {"format": FORMAT, **meta, "levels": q.levels, "kmeans_dim": dim,
            "latent_channels": ae.channels, "stride": ae.stride}  # fmt: skip
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    return q


def bundle_from_diffusers(
    source: str | Path, out: str | Path, crops: Any, *, name: str, version: int = 1,
    ks: tuple[int, ...] = DEFAULT_KS, dim: int = 4, copy: bool = True, seed: int = 0,
) -> str:  # fmt: skip
    """A bundle for a diffusers autoencoder (a local folder or a hub id, through
    `from_pretrained`): its weights copied into out/model (`save_pretrained`) or referenced
    (`copy=False`), quantizers fitted on the latents of `crops` ((N, 3, H, W) in [0, 1]).
    Returns the weights hash."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    net = load_diffusers(source)
    meta: dict[str, Any] = {"name": name, "version": version, "kind": "diffusers",
                            "class": type(net).__name__}  # fmt: skip
    if copy:
        net.save_pretrained(str(out / DIFFUSERS_DIR))
    else:
        meta["source"] = str(source)
    write_bundle_files(out, meta, Autoencoder(net, type(net).__name__), crops, ks, dim, seed)
    clear_cache()
    return load_bundle(out).weights_sha256


def export_pathae(
    state: dict, arch: dict, crops: Any, val: Any, out: str | Path, record: dict[str, Any],
    name: str = "pathae-he-f8c8", version: int = 1,
) -> str:  # fmt: skip
    """Our trained AE -> a bundle: fp16 weights, quantizers fitted on the latents of `crops`
    (with the fp16 weights), and each level's PSNR / bytes on the validation crops `val`."""
    from safetensors.torch import save_file

    from .model import AEConfig, PathAENet

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    half = {k: v.detach().half().contiguous() for k, v in state.items()}
    save_file(half, str(out / PATHAE_FILE))
    net = PathAENet(AEConfig.from_dict(arch))
    net.load_state_dict({k: v.float() for k, v in half.items()})
    ae = Autoencoder(net.eval(), "pathae")
    meta = {"name": name, "version": version, "kind": "pathae", "arch": arch, **record}
    write_bundle_files(out, meta, ae, crops)
    clear_cache()
    b = load_bundle(out)
    meta["validation"] = level_report(b, val)
    (out / META_FILE).write_text(json.dumps(read_meta(out) | {"validation": meta["validation"]},
                                            indent=1))  # fmt: skip
    for p in out.iterdir():
        p.chmod(0o644)
    return b.weights_sha256


def level_report(bundle: Bundle, val: Any) -> list[dict[str, Any]]:
    """PSNR and bytes per 96 px crop of every level on validation crops (N, 3, 96, 96)."""
    from .codec import code_tiles, decode_tiles

    tiles = (val.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    rows = []
    for q, level in enumerate(bundle.quantizers.levels, start=1):
        blobs = code_tiles(bundle, list(tiles), q)
        dec = np.stack(decode_tiles(bundle, blobs))
        mse = np.mean((dec.astype(np.float64) - tiles) ** 2)
        psnr = round(float(10 * np.log10(255**2 / mse)), 3)
        nbytes = round(float(np.mean([len(b) for b in blobs])), 1)
        rows.append({"quality": q, "level": level, "psnr": psnr, "bytes_per_96px": nbytes})
    return rows
