"""Token-by-token generation: the step generator, side by side, run export."""
