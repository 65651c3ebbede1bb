"""imageward: keep container images verifiable, small and fast to start."""

__version__ = "0.1.0.dev0"
