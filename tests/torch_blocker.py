"""The start of a child Python program that must run without torch (and the other heavy
libraries): importing any of them fails as if it were not installed. Used by the tests that
decode containers in a fresh process to prove a base install can (test_torch_free.py,
test_learned_speed_exact.py)."""

BLOCKED = ("torch", "torchvision", "timm", "diffusers", "safetensors", "kornia",
           "pytorch_msssim", "faiss", "lifelines")  # fmt: skip

# sys.modules[name] = None stops `import name` at once; the finder also refuses submodules
# and anything imported through importlib
PREAMBLE = f"""
import importlib.abc, json, sys
import numpy as np

BLOCKED = {BLOCKED!r}


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None


sys.meta_path.insert(0, Refuse())
for m in BLOCKED:
    sys.modules[m] = None
"""
