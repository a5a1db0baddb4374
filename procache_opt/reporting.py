"""Files a search leaves behind: the schedule, the trials, a convergence plot, before/after images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from procache_opt.result import HELDOUT_SCHEDULES, SearchResult
from procache_opt.schedule import Schedule

__all__ = ["write_search_outputs", "generate_grid", "final_table"]


def final_table(result: SearchResult) -> str:
    """A Markdown table: the best schedule and the baselines on held-out samples (see ``HELDOUT_SCHEDULES``)."""
    best = result.best_trial
    rows = [
        "| schedule | pattern | FLOPs ratio | measured speedup | " + " | ".join(_quality_names(result)) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in _quality_names(result)) + " |",
    ]
    if "best" in result.heldout:
        for label in (name for name in HELDOUT_SCHEDULES if name in result.heldout):
            entry = result.heldout[label]
            scores = entry["scores"]
            latency = scores.get("latency", {}).get("mean")
            speed = f"{1 / latency:.2f}x" if latency else "n/a"
            cells = [f"{scores[n]['mean']:.4g}" if n in scores else "n/a" for n in _quality_names(result)]
            rows.append(f"| {label} | `{entry['pattern']}` | {entry['flops_ratio']:.3f} | {speed} | "
                        + " | ".join(cells) + " |")
    else:
        cells = [f"{best.values.get(n, float('nan')):.4g}" for n in _quality_names(result)]
        rows.append(f"| best | `{best.schedule}` | {best.flops_ratio:.3f} | n/a | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _quality_names(result: SearchResult) -> list[str]:
    if "best" in result.heldout:
        return [n for n in result.heldout["best"]["scores"] if n != "latency"]
    return [n for n in result.best_trial.values if n != "flops_ratio"]


def write_search_outputs(result: SearchResult, model: Any, out: Path) -> str:
    """Write ``schedule.json``, ``result.json``, ``convergence.png`` and ``before_after.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    result.best.save(out / "schedule.json")
    result.save(out / "result.json")
    result.plot(out / "convergence.png")
    before_after(model, result, out / "before_after.png")
    table = final_table(result)
    (out / "summary.md").write_text(result.summary() + "\n\n" + table + "\n")
    return f"{result.summary()}\n\n{table}\n\nwrote {out}/schedule.json, result.json, convergence.png, before_after.png"


def before_after(model: Any, result: SearchResult, path: Path, num_samples: int = 8) -> Path:
    """Full computation (top row) against the best schedule (bottom row) on the same noise and conditions.

    The held-out check's images are shown when the search kept them (``result.heldout_images``); otherwise
    (a loaded result, or no held-out check) both rows are generated on held-out samples.
    """
    if result.heldout_images:
        return _save_rows([result.heldout_images[k][:num_samples] for k in ("full", "best")], path)
    from procache_opt.calibration import Calibration
    from procache_opt.models import load_pipeline, worker_model_spec
    from procache_opt.spec import EvaluationSpec

    pipe = load_pipeline(model)
    spec = EvaluationSpec(
        model=worker_model_spec(model),
        calibration=Calibration.default(pipe, num_samples=num_samples, split="heldout"),
        objectives={"psnr": 1.0},
        num_inference_steps=result.best.num_steps,
        guidance_scale=float(result.config.get("guidance_scale", 4.0)),
        selective=result.best.selective,
    )
    evaluator = spec.build_evaluator(pipe)
    return _save_rows([evaluator.reference().images, evaluator.run(result.best).images], path)


def generate_grid(model: Any, schedule: Schedule, labels: list[int], guidance: float, seed: int, path: Path) -> Path:
    """Class-conditional samples (DiT pipelines) generated under ``schedule``."""
    import torch

    from procache_opt.models import load_pipeline
    from procache_opt.pipelines import adapter_for
    from procache_opt.runtime import apply

    pipe = load_pipeline(model)
    try:
        adapter_for(pipe).validate(pipe, labels)  # an untrained or missing class row is refused, not drawn
    except ValueError as exc:
        raise ValueError(f"--labels: {exc}") from None
    generator = torch.Generator().manual_seed(seed)
    with apply(pipe, schedule):
        images = pipe(class_labels=labels, num_inference_steps=schedule.num_steps, guidance_scale=guidance,
                      generator=generator, output_type="pt").images
    return _save_rows([images], path)


def _save_rows(rows: list[Any], path: Path) -> Path:
    import torch
    from torchvision.utils import save_image

    images = torch.cat([r.float().cpu() for r in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=len(rows[0]), padding=2, pad_value=1.0)
    return path
