"""Kernel registry: every op has a portable PyTorch reference; device kernels register over it."""
