"""Triton kernels and their launchers. Kernels are imported lazily by fastattn.ops, never at package import."""
