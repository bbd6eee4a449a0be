"""Outputs: the embedding grid and the files it is stored in."""

from .formats import FORMATS, format_for, read_grid, write_grid
from .grid import EmbeddingGrid

__all__ = ["FORMATS", "EmbeddingGrid", "format_for", "read_grid", "write_grid"]
