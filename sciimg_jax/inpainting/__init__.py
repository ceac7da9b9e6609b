"""Method 1: pseudo-healthy 3D brain-MRI inpainting, axial coarse pass and coronal refinement."""
