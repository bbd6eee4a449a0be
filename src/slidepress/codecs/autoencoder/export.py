"""Writing a bundle whose network changed after the bundle was made (a fine-tuned decoder,
`training.ae_decoder`): same encoder and quantizers, so tiles coded before decode with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .loading import (
    DIFFUSERS_DIR,
    META_FILE,
    PATHAE_FILE,
    Bundle,
    _weight_files,
    read_meta,
    weights_hash,
)


def export_bundle(bundle: Bundle, dst: Path, record: dict[str, Any]) -> str:
    """The bundle with its current (fine-tuned) decoder: same encoder and quantizers, new
    weights hash, name + "-ft", `record` added to its metadata. Returns the weights hash."""
    from safetensors.torch import save_file

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copy2(bundle.folder / "quantizers.npz", dst / "quantizers.npz")
    meta = read_meta(bundle.folder)
    meta = {**meta, "name": f"{meta['name']}-ft", **record, "finetuned_from": {
        "name": meta["name"], "weights_sha256": bundle.weights_sha256}}  # fmt: skip
    net = bundle.ae.net
    if bundle.ae.kind == "pathae":
        save_file({k: v.detach().half().contiguous() for k, v in net.state_dict().items()},
                  str(dst / PATHAE_FILE))  # fmt: skip
        files = [dst / PATHAE_FILE]
    else:
        meta.pop("source", None)
        net.save_pretrained(str(dst / DIFFUSERS_DIR))
        files = _weight_files(dst / DIFFUSERS_DIR)
    (dst / META_FILE).write_text(json.dumps(meta, indent=1))
    return weights_hash([*files, dst / "quantizers.npz"])
