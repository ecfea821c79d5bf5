"""Data: the synthetic heart phantom, preprocessing into per-slice caches, and datasets."""
