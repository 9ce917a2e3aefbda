"""Records, dataset readers and writers, and the synthetic multimodal task."""

from mstar_fast.data.records import Prompt, Sample

__all__ = ["Prompt", "Sample"]
