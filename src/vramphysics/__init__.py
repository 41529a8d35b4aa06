"""vram-physics: measure how much memory an LLM engine needs, per model and per context."""

__version__ = "0.1.0"
