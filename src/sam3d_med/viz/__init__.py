"""Figures: label overlays, slice comparison grids, mesh renders, the HTML report (headless, CPU)."""
