"""What one training step of each method computes; the loop that runs them is `dslim.trainer`."""

from dslim.methods.sandwich import sandwich_step

__all__ = ["sandwich_step"]
