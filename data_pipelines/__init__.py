"""Data pipelines: BraTS-layout NIfTI folders, the embedded MNI152-derived data, TFDS and grain."""
