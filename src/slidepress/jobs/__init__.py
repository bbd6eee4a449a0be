"""What a job may be asked for: one declarative spec per job kind (`options.py`), and the one
syntax of quality sweeps (`qualities.py`).

    options.py    Option, JobSpec; ENCODE, COMPRESS (JOB_SPECS); READER, MPP_OVERRIDE
    qualities.py  'jpeg=50,80,90;learned=1,3,5' -> {codec: [qualities]}

Imports no typer and no pydantic: the command line (cli/options.py) and the service
(service/jobs.py) render the specs in their own terms.
"""

from .options import COMPRESS, ENCODE, JOB_SPECS, MPP_OVERRIDE, READER, JobSpec, Option

__all__ = ["COMPRESS", "ENCODE", "JOB_SPECS", "MPP_OVERRIDE", "READER", "JobSpec", "Option"]
