"""The one training loop (loop) and its processes under torchrun (distributed)."""
