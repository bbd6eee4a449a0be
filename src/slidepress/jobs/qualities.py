"""The one syntax of a quality sweep, `--qualities 'jpeg=50,80,90;learned=1,3,5'`, shared by
`bench codecs` and `eval downstream`.

Each codec named once, its qualities separated by commas, codecs by semicolons. Repeating
the option is the same as joining its values with `;` (`-q jpeg=50 -q webp=60`). Which
codecs exist and which qualities they take is checked where the sweep is used (the codec's
own range, `get_codec`); codecs left out keep the command's default sweep.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UsageError

QUALITIES_HELP = (
    "Per-codec quality sweeps, CODEC=Q1,Q2,...;CODEC=..., e.g. 'jpeg=50,80,90;learned=1,3,5' "
    "(codecs left out: their default sweep)."
)


def parse_qualities(text: str | Sequence[str] | None) -> dict[str, list[float]]:
    """'jpeg=50,80,90;webp=60,80' -> {'jpeg': [50.0, 80.0, 90.0], 'webp': [60.0, 80.0]}; a
    sequence (the option repeated) is read as its items joined by ';'."""
    if text is not None and not isinstance(text, str):
        text = ";".join(text)
    out: dict[str, list[float]] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        name, sep, values = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(
                f"--qualities: expected CODEC=Q1,Q2,... in {part.strip()!r} "
                f"(e.g. 'jpeg=50,80,90;webp=60,80')"
            )
        try:
            qs = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"--qualities: {values.strip()!r} are not numbers ({name})") from None
        if not qs:
            raise UsageError(f"--qualities: no values for {name}")
        if name in out:
            raise UsageError(f"--qualities: {name} given twice")
        out[name] = qs
    return out
