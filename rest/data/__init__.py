"""The user's data: splits read and checked (splits), and batches of row indices for training (batching)."""
