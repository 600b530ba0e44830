"""What Improve learns from and how: the selection of Grow rows (selection) and the losses (objectives)."""
