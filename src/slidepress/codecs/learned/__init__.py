"""slidepress's own learned tile codec, trained on H&E: a mean-scale hyperprior with a shallow
synthesis (model.py), decoded in exact integer arithmetic (exact.py) with shipped entropy
tables coded by constriction (entropy.py), its weights folder read without torch
(weights_folder.py), exported by export.py, run by runtime.py, wrapped as a registry codec by
codec.py, trained by `slidepress.training.learned_codec` (scripts/train_codec.py)."""
