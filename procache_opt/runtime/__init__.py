"""The caching runtime: make a diffusers DiT/PixArt pipeline follow a ProCache schedule.

Example:
    >>> import procache_opt.runtime as runtime
    >>> from procache_opt import Schedule
    >>> from procache_opt.testing import tiny_dit_pipeline
    >>> pipe = tiny_dit_pipeline()
    >>> with runtime.apply(pipe, Schedule.from_pattern([1, 0, 2, 1])):
    ...     images = pipe(class_labels=[3], num_inference_steps=4, output_type="np").images
"""

from procache_opt.runtime.blocks import BlockAdapter, UnsupportedModelError, register_block
from procache_opt.runtime.context import MissingStepContextError
from procache_opt.runtime.handle import BRANCH_HOOK, CAPTURE_HOOK, NORM_HOOK, STEP_HOOK, CacheHandle, apply

__all__ = [
    "BRANCH_HOOK",
    "CAPTURE_HOOK",
    "NORM_HOOK",
    "STEP_HOOK",
    "BlockAdapter",
    "CacheHandle",
    "MissingStepContextError",
    "UnsupportedModelError",
    "apply",
    "register_block",
]
