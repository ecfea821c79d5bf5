"""sam3d-med: LoRA fine-tuning of SAM 3D Objects' sparse-structure stage on CT data."""

__version__ = "0.1.0"
