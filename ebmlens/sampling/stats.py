"""Moved: class statistics are data, not sampling. They live in :mod:`ebmlens.stats`; this module
keeps the old import path (``ebmlens.sampling.stats``) working."""
from ..stats import ClassStats, class_stats, coerce_stats, missing_stats_error

__all__ = ["ClassStats", "class_stats", "coerce_stats", "missing_stats_error"]
