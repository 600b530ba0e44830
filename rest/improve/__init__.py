"""What Improve learns from and how: the selection of Grow rows (selection), the shapes of its data (batches) and
its losses, each naming its data (objectives)."""
