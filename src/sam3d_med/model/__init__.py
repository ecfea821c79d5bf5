"""The SAM3D sparse-structure model, official checkpoints and their download."""
