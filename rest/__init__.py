"""rest: Reinforced Self-Training (Gulcehre et al. 2023) as an offline Grow/Improve pipeline."""

__version__ = "0.1.0"
