"""fedmpi: an MPI-based simulator of federated PEFT of transformer language models."""

__version__ = "0.1.0"
