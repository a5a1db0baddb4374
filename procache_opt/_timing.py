"""Wall-clock timing of one pipeline call, with device work finished before the clock stops."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["timed_call"]


def timed_call(pipe: Any, kwargs: dict[str, Any]) -> float:
    """Seconds of ``pipe(**kwargs)``; on accelerators the device is synchronised before and after."""
    import torch

    device = pipe.device
    if device.type != "cpu":
        torch.accelerator.synchronize(device)
    start = time.perf_counter()
    pipe(**kwargs)
    if device.type != "cpu":
        torch.accelerator.synchronize(device)
    return time.perf_counter() - start
