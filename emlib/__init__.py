"""emlib: reproduce emergent-misalignment findings, from a laptop CPU to a GPU."""

__version__ = "0.1.0"
