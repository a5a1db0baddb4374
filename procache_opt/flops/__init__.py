"""Analytic multiply-accumulate (MAC) counts of diffusers DiT and PixArt-α transformers under a schedule.

Counts come from the model's config alone, so a full-size model is costed before anything is downloaded, and
this package never imports torch (strategies use :func:`step_costs` without it). Every term mirrors a
computation in diffusers 0.42; ``docs/flops.md`` lists them and validates the counts against
``torch.utils.flop_counter.FlopCounterMode`` and the DiT paper.

Conventions: one MAC is one multiply-accumulate; FLOPs = 2 x MACs. Matrix products are counted as
FlopCounterMode and fvcore count them (biases free). The kind ``"norm"`` adds the elementwise work that REUSE
steps still do: LayerNorm at 4 MACs per element (5 with an affine), fvcore's estimate, and one per element
for each modulation, gate and residual add. Activations, softmax and the position-embedding add are not
counted, as in those tools. ToCa and ProCache report costs per generation with guidance batched (every
forward is batch 2 per image); so does :func:`count_flops` with ``guidance=True``.

Example:
    >>> report = count_flops("dit-xl-2-256", num_inference_steps=50)
    >>> round(report.forward_matmul_macs / 1e9, 2)  # DiT paper, Table 4: 118.64 "Gflops" (fvcore MACs)
    118.67
"""

from procache_opt.flops._count import MODULE_KINDS, residual_cache_costs, step_costs
from procache_opt.flops._report import FlopsReport, count_flops
from procache_opt.flops._spec import PRESETS, ModelSpec

__all__ = ["MODULE_KINDS", "PRESETS", "FlopsReport", "ModelSpec", "count_flops", "residual_cache_costs", "step_costs"]
