"""Errors a user can act on. The CLI catches `SlidepressError`, prints one line and exits 2."""


class SlidepressError(Exception):
    """Bad input or usage: the message says what is wrong and how to fix it."""


class SlideError(SlidepressError):
    """A slide cannot be opened or read."""


class MppError(SlideError):
    """Missing or implausible resolution (microns per pixel)."""


class TissueError(SlideError):
    """No tissue found where tissue is needed."""


class EncoderError(SlidepressError):
    """An encoder name, file or weights cannot be used."""


class FormatError(SlidepressError):
    """An output/input grid file cannot be written or read."""


class CodecError(SlidepressError):
    """A codec name, quality or coded tile cannot be used."""


class ContainerError(SlidepressError):
    """A slide container is missing, truncated or corrupted."""


class UsageError(SlidepressError):
    """Invalid option values or paths."""


class StorageError(SlidepressError):
    """An object store URL cannot be read or written: missing bucket or key, wrong
    credentials, denied access (the message names the URL, never a secret)."""


class OutputExistsError(UsageError):
    """An output of other slide content or parameters is in the way (replace: --overwrite).
    Its own type, so a batch can replace such outputs when asked without parsing messages."""


class OutputBusyError(UsageError):
    """Another process is writing the same output right now."""
