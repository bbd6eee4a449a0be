"""Benchmarks: Bjøntegaard deltas (`bdrate`) and the conventional-codec benchmark (`codecs`)."""

from .bdrate import bd_quality, bd_rate, rate_at_quality, rd_envelope

__all__ = ["bd_quality", "bd_rate", "rate_at_quality", "rd_envelope"]
