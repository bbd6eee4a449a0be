"""Job errors as a service user reads them: the upload named by its label (never a server
path), and the request field to change instead of a command-line flag."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..limits import ENV_PREFIX
from ..slide.mpp import HOW_TO_OVERRIDE

MPP_HINT = "set the request field mpp_override (level-0 micrometres per pixel) for this upload"
# limits.hint(name): the command line's advice, rewritten for a service user
_LIMIT_HINT = re.compile(
    r"raise it with --limit (\w+)=N \(or " + re.escape(ENV_PREFIX) + r"\w+=N\) if the file is "
    r"genuine"
)
_FLAGS = {
    "--mpp-override": "the request field mpp_override",
    "--mpp-csv": "the request field mpp_override",
    "--limit": "a limit of the service (its administrator sets them)",
}


def _limit_hint(m: re.Match[str]) -> str:
    if m.group(1) == "max_image_pixels":
        return ("the service decodes plain images whole and refuses larger ones (its "
                "max_image_megapixels setting); send the slide in a tiled format such as "
                "pyramidal TIFF")  # fmt: skip
    return (
        f"the service's {m.group(1)} limit refuses it; ask its administrator if the file is genuine"
    )


def for_user(text: str, data_dir: Path, entries: list[dict[str, Any]] = ()) -> str:
    """`text` with each upload's server path replaced by its label, any other path under the
    data dir by its last part, and CLI advice replaced by request fields."""
    if not text:
        return text
    text = text.replace(HOW_TO_OVERRIDE, MPP_HINT)
    text = _LIMIT_HINT.sub(_limit_hint, text)
    for entry in entries:
        path = Path(entry["item"]["path"])
        label = entry.get("label") or path.name
        text = text.replace(str(path), label)
        if path.name != label and len(path.name) > 3:  # the stored name, e.g. x.png.tiff
            text = re.sub(rf"(?<![\w.]){re.escape(path.name)}(?![\w.])", label, text)
    root = re.escape(str(data_dir))
    text = re.sub(root + r"/[^\s'\",;:)\]]*", lambda m: f"'{Path(m.group(0)).name}'", text)
    for flag, field in _FLAGS.items():
        text = re.sub(rf"(?:pass |use |with )?{re.escape(flag)}(?: \S+)?", field, text)
    return text
