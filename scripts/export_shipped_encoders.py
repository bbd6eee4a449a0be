"""Export NIC training runs into src/slidepress/weights/nic-METHOD (fp16, config, model card).

    python scripts/export_shipped_encoders.py [RUNS] [METHOD ...]

RUNS defaults to runs/encoders (scripts/train_shipped_encoders.sh); issue 24's long runs are
in runs/nic24 (scripts/train_nic24.sh). Only the methods named are exported (default: all
that RUNS holds), so one improved encoder replaces its shipped folder without touching others.
"""

import sys
from pathlib import Path

from slidepress.training.nic.export import export_run

METHODS = ("vae", "contrastive", "bigan", "multitask", "supervised", "simclr")
runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/encoders")
methods = sys.argv[2:] or [m for m in METHODS if (runs / m / "model.safetensors").exists()]
weights = Path(__file__).resolve().parent.parent / "src" / "slidepress" / "weights"
for method in methods:
    run = runs / method
    if (run / "model.safetensors").exists():
        print("exported", export_run(run, weights / f"nic-{method}", f"nic-{method}"))
    else:
        sys.exit(f"missing run {run}")
