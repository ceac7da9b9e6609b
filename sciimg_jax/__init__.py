"""sciimg_jax: JAX/Flax diffusion models and classifiers for scientific imaging."""

__version__ = "0.1.0"
