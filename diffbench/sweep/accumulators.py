"""Moved to diffbench.metrics.accumulators (metrics own their accumulators); kept as an import path."""

from diffbench.metrics.accumulators import (  # noqa: F401
    MomentsAcc,
    RowsAcc,
    SumsAcc,
    as_float,
    merge_moments,
    pack,
    unpack,
)
from diffbench.metrics.registry import Batch as Chunk  # noqa: F401
