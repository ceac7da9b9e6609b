"""IR versus RGB pathology: spectral-spatial classifiers and collapse diagnostics (DESIGN.md, 3)."""
