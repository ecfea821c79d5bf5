"""File input/output: NIfTI volumes with their geometry, and atomic writes."""
