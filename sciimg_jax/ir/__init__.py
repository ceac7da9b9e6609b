"""IR versus RGB pathology: spectral-spatial classifiers and collapse diagnostics (docs/ir_pathology.md)."""
