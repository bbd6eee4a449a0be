"""Export the runs of scripts/train_shipped_encoders.sh into src/slidepress/weights/nic-*."""

import sys
from pathlib import Path

from slidepress.training.nic.export import export_run

runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/encoders")
weights = Path(__file__).resolve().parent.parent / "src" / "slidepress" / "weights"
for method in ("vae", "contrastive", "bigan", "multitask", "supervised"):
    run = runs / method
    if (run / "model.safetensors").exists():
        print("exported", export_run(run, weights / f"nic-{method}", f"nic-{method}"))
    else:
        print("missing run", run)
