"""clusterfw: high availability for Linux hosts that share a block device,
through that disk alone.  See docs/ for the architecture."""

__version__ = "0.1.0"
