"""SAMScope: segment medical scans with Segment Anything-family models, and measure them."""

__version__ = "0.1.0"
