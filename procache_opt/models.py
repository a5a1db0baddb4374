"""Turn what a user passes as ``model`` into a ready diffusers pipeline.

``model`` may be a pipeline, a zoo name (``"dit-digits"``), a local folder that
``DiffusionPipeline.from_pretrained`` reads, or a picklable zero-argument factory. Names, folders and
factories are what Ray workers receive: a worker builds its own pipeline once instead of unpickling a large
one for every trial.

Types are checked before anything is called: a torch module or an unsupported pipeline is callable too, and
calling one as a factory ran a ``DDPMPipeline``'s 1,000 UNet passes before failing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ModelSpec", "IN_PROCESS", "UnsupportedModelTypeError", "check_model_type", "load_pipeline",
           "is_pipeline", "model_label", "pipeline_class_name", "worker_model_spec"]

#: A zoo name, a local pipeline folder, or a zero-argument callable returning a pipeline.
ModelSpec = str | Path | Callable[[], Any]


#: Stands for a pipeline object that only exists in the driver's process (it cannot be sent to workers).
IN_PROCESS = "<in-process pipeline>"

_SUPPORTED = "a DiTPipeline, PixArtAlphaPipeline or PixArtSigmaPipeline (or a registered pipeline adapter)"


class UnsupportedModelTypeError(TypeError):
    """``model`` is of a kind procache-opt cannot search; the message says what was found and what works."""


def worker_model_spec(model: Any) -> ModelSpec:
    """What a worker can rebuild ``model`` from: names and folders as text, factories as they are."""
    if isinstance(model, (str, Path)):
        return str(model)
    if _is_factory(model):
        return model
    return IN_PROCESS


def model_label(model: Any) -> str:
    """How a :class:`~procache_opt.search_config.SearchConfig` names ``model``: its name or folder as given, or
    ``<in-process DiTPipeline>`` / ``<factory module.name>`` for objects (which travel beside the config)."""
    if isinstance(model, (str, Path)):
        return str(model)
    if _is_factory(model):
        return f"<factory {getattr(model, '__module__', '?')}.{getattr(model, '__qualname__', type(model).__name__)}>"
    return f"<in-process {type(model).__name__}>"


def is_pipeline(obj: Any) -> bool:
    return hasattr(obj, "transformer") and hasattr(obj, "scheduler") and callable(obj)


def _is_torch_module(obj: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(obj).__mro__)


def _is_diffusers_pipeline(obj: Any) -> bool:
    return any(c.__name__ == "DiffusionPipeline" for c in type(obj).__mro__)


def _is_factory(obj: Any) -> bool:
    return callable(obj) and not (_is_torch_module(obj) or _is_diffusers_pipeline(obj) or is_pipeline(obj))


def check_model_type(model: Any) -> None:
    """Refuse, without calling anything, a ``model`` that is not a name, a folder, a supported pipeline or a
    factory (what was found and what is supported, in one line)."""
    if isinstance(model, (str, Path)):
        return
    if _is_diffusers_pipeline(model) or (is_pipeline(model) and not _is_torch_module(model)):
        from procache_opt.pipelines import adapter_for

        adapter_for(model)  # a TypeError naming the supported pipelines
    elif hasattr(model, "transformer_blocks"):
        raise UnsupportedModelTypeError(
            f"search() needs a pipeline to generate samples, got a bare {type(model).__name__}; wrap it, e.g. "
            "DiTPipeline(transformer=..., vae=..., scheduler=DDIMScheduler(...)), or pass a zoo name or folder"
        )
    elif _is_torch_module(model) or not callable(model):
        raise UnsupportedModelTypeError(
            f"got a {type(model).__name__}; model must be {_SUPPORTED}, a zoo name, a pipeline folder or a "
            "zero-argument factory returning a pipeline"
        )


def pipeline_class_name(model: Any) -> str | None:
    """The pipeline class a zoo name or local folder names in its ``model_index.json``, read without loading
    anything (so a wrong kind of condition is refused before a multi-GB load); ``None`` for other models."""
    if not isinstance(model, (str, Path)):
        return None
    from procache_opt import zoo

    folder = zoo.path(str(model)) if str(model) in zoo.list() else Path(model)
    try:
        return str(json.loads((folder / "model_index.json").read_text())["_class_name"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_pipeline(model: Any, device: str | None = None, dtype: Any = None) -> Any:
    """A diffusers pipeline for ``model`` (see the module docstring for what ``model`` may be)."""
    check_model_type(model)
    if isinstance(model, (str, Path)):
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
        check_model_type(pipe)  # a folder holding a DDPMPipeline is refused before it is used
    elif _is_factory(model):
        pipe = model()
        if not (is_pipeline(pipe) or _is_diffusers_pipeline(pipe)):
            raise UnsupportedModelTypeError(
                f"the model factory {model_label(model)} returned {type(pipe).__name__}, not {_SUPPORTED}")
        check_model_type(pipe)
    else:
        pipe = model
    if device is not None or dtype is not None:
        pipe = pipe.to(device=device, dtype=dtype)
    return pipe
