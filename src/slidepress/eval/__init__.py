"""Evaluation of frozen patch encoders: does an embedding keep what pathology needs?

`run_probe` trains the MLP probe of Tellez et al. (TPAMI 2019, Table 1) on PCam and Kather 2016
features and writes probe.csv/.json/.md/.png; `mean-rgb` is the baseline to beat.
"""

from .probe import (
    MlpProbe,
    ProbeReport,
    ProbeResult,
    ResampleWarning,
    comparison_sentence,
    embed_folder,
    list_image_folder,
    prepare_image,
    probe_kather,
    probe_pcam,
    run_probe,
    train_mlp_probe,
)

__all__ = [
    "MlpProbe",
    "ProbeReport",
    "ProbeResult",
    "ResampleWarning",
    "comparison_sentence",
    "embed_folder",
    "list_image_folder",
    "prepare_image",
    "probe_kather",
    "probe_pcam",
    "run_probe",
    "train_mlp_probe",
]
