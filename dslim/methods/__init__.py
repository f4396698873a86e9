"""What one training step of each method computes; the loop that runs them is `dslim.training`."""
