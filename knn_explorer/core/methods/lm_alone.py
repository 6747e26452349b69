"""The language model alone: p_final = p_LM. The reference every other method is measured against."""
from __future__ import annotations

from .base import Method, MethodStep, PassOutputs


LM_ALONE = "none"  # the reference every comparison, sweep and kept run scores the other methods against


class LmAlone(Method):
    name = LM_ALONE
    label = "LM alone"
    summary = "the model's own next-token distribution, no retrieval"

    def combine(self, outputs: PassOutputs) -> MethodStep:
        return MethodStep(outputs.log_p_lm.double())
