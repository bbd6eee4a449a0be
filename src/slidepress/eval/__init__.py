"""Evaluation of frozen patch encoders: does an embedding keep what pathology needs?

`run_probe` trains the MLP probe of Tellez et al. (TPAMI 2019, Table 1) on PCam and Kather 2016
features and writes probe.csv/.json/.md/.png; `mean-rgb` is the baseline to beat.

    embedding.py  labelled patches -> features (patches brought to the encoder's scale)
    mlp.py        the probe itself (torch, imported on use)
    probe.py      one encoder on one dataset -> ProbeResult (AUC, bootstrap CI)
    report.py     the report files and the baseline sentences
    run.py        run_probe: checks, every encoder x dataset, then the report
Statistics (AUC, bootstrap, paired differences) come from `slidepress.metrics.stats`.
"""

from ..imagefolder import list_image_folder, prepare_image
from .embedding import ResampleWarning, embed_folder
from .mlp import MlpProbe, train_mlp_probe
from .probe import ProbeResult, probe_kather, probe_pcam
from .report import comparison_sentence
from .run import ProbeReport, run_probe

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
