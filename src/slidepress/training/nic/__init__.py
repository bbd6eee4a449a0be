"""The NIC encoder family: patch data (`data`), one feed per method data kind (`feeds`), the
trainer on the generic loop (`trainer`) and the export to a shipped encoder folder (`export`).

Datasets (documented in the run's config.json and the model cards):
- images (VAE, BiGAN): every `--data` folder pooled, labels ignored.
- tasks (multitask, supervised): one task per `--data` folder (its class folders are the
  classes); multitask adds a tissue-vs-background task cut from `--slides` with the tissue mask.
- pairs (contrastive): locations on the tissue of `--slides`; `--data` images serve as
  "another image" partners.
Folders with `train/` and `valid/` use them; others are split (seeded, stratified).
"""
