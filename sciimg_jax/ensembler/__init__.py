"""Diff-Ensembler: perpendicular 2D diffusion models fused by a 3D network (docs/diff_ensembler.md)."""
