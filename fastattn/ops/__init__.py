"""The custom ops (torch.ops.fastattn.*), their fake kernels and autograd, and the public functions."""
