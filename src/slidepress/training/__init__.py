"""One training harness for every trainable model of slidepress, kept apart from the models
(CompressAI style: a codec's runtime never needs its trainer).

The harness: `run` (the run folder, budgets, device, torch settings, curves), `checkpoint`
(the one checkpoint format: atomic, exact resume), `loop` (the `Trainer` contract and the
generic step loop), `samplers` (crops from image folders and slides), `augment` (stain and
geometry augmentation). One trainer per model family:

- `nic/`: NIC patch encoders (`slidepress train encoder`)
- `learned_codec`: the learned tile codec (scripts/train_codec.py)
- `ae_decoder`: decoder-only fine-tuning of autoencoder codecs (`train codec-decoder`)
- `pathae`: slidepress's own autoencoder codec (scripts/train_pathae.py)
- `featsim`: the feature-similarity network (scripts/train_featsim.py)

Nothing outside `cli/`, scripts and benchmarks imports this package.
"""
