"""The one training loop (loop), what every trainer shares (batches, objectives: NLL) and its processes under
torchrun (distributed)."""
