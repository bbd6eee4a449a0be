"""Turn a training run into a shippable encoder folder: fp16 weights, config, model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ...store.atomic import atomic_path


def export_run(run_dir: Path, dest: Path, name: str, *, fp16: bool = True, notes: str = "") -> Path:
    """Copy a run's best weights (fp16 halves the size; training-only parts such as a GAN's
    discriminator are left out),
    its config (with `name` added), curves and preview into `dest`, and write MODEL_CARD.md."""
    from safetensors.torch import load_file, save_file

    from ...encoders.nic import METHODS

    run_dir, dest = Path(run_dir), Path(dest)
    meta = json.loads((run_dir / "config.json").read_text())
    meta["name"] = name
    meta["version"] = "1"
    state = load_file(str(run_dir / "model.safetensors"))
    skip = METHODS[meta["config"]["method"]].training_only
    if skip:
        state = {k: v for k, v in state.items() if not k.startswith(skip)}
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_path(dest) as tmp:
        tmp.mkdir(parents=True)
        save_file(state, str(tmp / "model.safetensors"), metadata={"name": name})
        (tmp / "model.safetensors").chmod(0o644)  # package data: readable by every user
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        for extra in ("curves.png", "preview.png", "log.csv"):
            if (run_dir / extra).exists():
                shutil.copy(run_dir / extra, tmp / extra)
        (tmp / "MODEL_CARD.md").write_text(model_card(meta, notes))
    return dest


# where each method comes from (the model card's first line)
REFERENCES = {"simclr": "SimCLR, Chen et al., ICML 2020, as a NIC encoder"}
NIC_PAPERS = "Tellez et al., TPAMI 2019 / MIDL 2020"


def model_card(meta: dict, notes: str = "") -> str:
    cfg, enc, tr = meta["config"], meta["encoder"], meta["training"]
    ref = REFERENCES.get(cfg["method"], NIC_PAPERS)
    lines = [
        f"# {meta['name']}",
        "",
        f"NIC patch encoder, method `{cfg['method']}` ({ref}),",
        f"{enc['patch_size']} px patches at {enc['mpp']} um/px -> {enc['dim']}-dim codes;",
        "inputs scaled to [-1, 1]. Weights stored fp16, computed in fp32.",
        "",
        "## Training",
        f"- command: `{meta.get('command')}`",
        f"- epochs run {tr['epochs_run']} (best {tr['best_epoch']}), "
        f"{tr['seconds'] / 60:.1f} min on {meta['settings'].get('device') or 'cpu'} "
        f"(slidepress {meta['software']['slidepress']}, torch {meta['software']['torch']})",
        f"- settings: `{json.dumps(meta['settings'])}`",
        f"- method options: `{json.dumps(cfg['options'])}`",
        "",
        "## Data",
        "```json",
        json.dumps(meta["data"], indent=1),
        "```",
        "",
        "## Validation (best epoch)",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.4g} |" for k, v in tr["best_val"].items()],
        "",
    ]
    if notes:
        lines += ["## Notes", notes, ""]
    return "\n".join(lines)
