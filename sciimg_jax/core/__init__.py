"""The shared core: diffusion, models, the trainer and the utilities every method uses.

It imports no method (`sciimg_jax.inpainting`, ...) and nothing from `data_pipelines`
(tests/test_import_directions.py checks it).
"""
