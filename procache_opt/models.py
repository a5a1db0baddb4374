"""Turn what a user passes as ``model`` into a ready diffusers pipeline.

``model`` may be a pipeline, a zoo name (``"dit-digits"``), a local folder that
``DiffusionPipeline.from_pretrained`` reads, or a picklable zero-argument factory. Names, folders and
factories are what Ray workers receive: a worker builds its own pipeline once instead of unpickling a large
one for every trial.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ModelSpec", "IN_PROCESS", "load_pipeline", "is_pipeline", "worker_model_spec"]

#: A zoo name, a local pipeline folder, or a zero-argument callable returning a pipeline.
ModelSpec = str | Path | Callable[[], Any]


#: Stands for a pipeline object that only exists in the driver's process (it cannot be sent to workers).
IN_PROCESS = "<in-process pipeline>"


def worker_model_spec(model: Any) -> ModelSpec:
    """What a worker can rebuild ``model`` from: names and folders as text, factories as they are."""
    if isinstance(model, (str, Path)):
        return str(model)
    if callable(model) and not is_pipeline(model):
        return model
    return IN_PROCESS


def is_pipeline(obj: Any) -> bool:
    return hasattr(obj, "transformer") and hasattr(obj, "scheduler") and callable(obj)


def load_pipeline(model: Any, device: str | None = None, dtype: Any = None) -> Any:
    """A diffusers pipeline for ``model`` (see the module docstring for what ``model`` may be)."""
    if is_pipeline(model):
        pipe = model
    elif isinstance(model, (str, Path)):
        from procache_opt import zoo

        if str(model) in zoo.list():
            return zoo.load(str(model), device=device, dtype=dtype)
        if not Path(model).is_dir():
            raise ValueError(
                f"model {str(model)!r} is neither a bundled model ({', '.join(zoo.list())}) nor a local pipeline "
                "folder; download a checkpoint first (e.g. DiTPipeline.from_pretrained('facebook/DiT-XL-2-256')) "
                "and pass the pipeline or its folder"
            )
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(str(model), torch_dtype=dtype)
    elif callable(model):
        pipe = model()
        if not is_pipeline(pipe):
            raise TypeError(f"the model factory {model!r} returned {type(pipe).__name__}, not a diffusers pipeline")
    elif hasattr(model, "transformer_blocks"):
        raise TypeError(
            f"search() needs a pipeline to generate samples, got a bare {type(model).__name__}; wrap it, e.g. "
            "DiTPipeline(transformer=..., vae=..., scheduler=DDIMScheduler(...)), or pass a zoo name or folder"
        )
    else:
        raise TypeError(
            "model must be a diffusers pipeline, a zoo name, a pipeline folder or a factory; "
            f"got {type(model).__name__}"
        )
    if device is not None or dtype is not None:
        pipe = pipe.to(device=device, dtype=dtype)
    return pipe
