"""rest: Reinforced Self-Training (Gulcehre et al. 2023) as an offline Grow/Improve pipeline."""

from rest import environment as _environment

# Before anything imports torch, prefect or comet_ml: offline, quiet, bit-exact floats (see rest/environment.py).
_environment.apply()

__version__ = "0.1.0"
