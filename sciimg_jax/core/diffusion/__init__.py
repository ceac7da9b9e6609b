"""Diffusion: schedules and targets, steppers, the one sampler, and volume denoisers."""
