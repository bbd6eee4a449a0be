"""slidepress: compress whole-slide images into embedding grids (NIC) or coded tile containers."""

__version__ = "0.1.0"
