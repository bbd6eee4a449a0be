"""The one progress-callback shape every long operation takes.

`start(name, total)` announces a unit of work (a slide, a dataset, an epoch) and returns
`advance(n)`, called as items finish. The CLI passes rich progress bars; the service and the
batch runner pass their own recorders; library callers pass nothing.
"""

from __future__ import annotations

from collections.abc import Callable

Advance = Callable[[int], None]
ProgressStart = Callable[[str, int], Advance]


def no_progress(name: str, total: int) -> Advance:
    return lambda n: None
