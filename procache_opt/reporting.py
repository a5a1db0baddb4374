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
    """Labelled rows on the same held-out noise and conditions: the full computation, the searched schedule and the
    FORA baseline (each with its measured speedup and error), and the searched schedule's difference from the full
    computation, amplified. Small images are enlarged (nearest neighbour) so that a 32-pixel sample is readable.

    The held-out check's images are shown when the search kept them (``result.heldout_images``); otherwise
    (a loaded result, or no held-out check) the rows are generated on held-out samples.
    """
    images = result.heldout_images or _heldout_images(model, result, num_samples)
    return save_labelled_rows(before_after_rows(result, {k: v[:num_samples] for k, v in images.items()}), path)


def before_after_rows(result: SearchResult, images: dict[str, Any]) -> list[tuple[str, Any]]:
    """The rows of :func:`before_after` as (label, images) pairs."""
    rows = [("full computation", images["full"]), (f"searched schedule\n{_facts(result, 'best')}", images["best"])]
    if "fora_baseline" in images:
        rows.append((f"FORA baseline\n{_facts(result, 'fora_baseline')}", images["fora_baseline"]))
    difference = (images["best"].float() - images["full"].float()).abs().mean(dim=1, keepdim=True)
    gain = _gain(float(difference.flatten().quantile(0.99)))
    rows.append((f"|searched - full|\nx {gain:g}", (difference * gain).clamp(0, 1).expand(-1, 3, -1, -1)))
    return rows


def _facts(result: SearchResult, key: str) -> str:
    """``"1.93x measured\nfeature_error 0.0061"`` from the held-out check (FLOPs ratio when it was not timed)."""
    entry = result.heldout.get(key)
    if not entry:
        return ""
    scores = entry["scores"]
    latency = scores.get("latency", {}).get("mean")
    speed = f"{1 / latency:.2f}x faster (measured)" if latency else f"FLOPs ratio {entry['flops_ratio']:.2f}"
    quality = next((name for name in scores if name != "latency"), None)
    return speed + (f"\n{quality} {scores[quality]['mean']:.3g}" if quality else "")


def _gain(large: float) -> float:
    """The largest of 1, 2, 5, 10, ... that keeps a large difference (the 99th percentile) below 0.8: visible, and
    only the largest 1% saturated."""
    steps = [m * 10**e for e in range(4) for m in (1, 2, 5)]
    return max([g for g in steps if g * large <= 0.8] or [1])


def _heldout_images(model: Any, result: SearchResult, num_samples: int) -> dict[str, Any]:
    """Full computation, best schedule and (if the result names it) the FORA baseline on held-out samples, run by
    the runtime the search used."""
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
        runtime=result.runtime_name,
        runtime_options=dict(result.config.get("runtime_options") or {}),
    )
    evaluator = spec.build_evaluator(pipe)
    images = {"full": evaluator.reference().images, "best": evaluator.run(result.best).images}
    if "fora_baseline" in result.heldout:
        fora = Schedule.from_pattern(int(c) for c in result.heldout["fora_baseline"]["pattern"])
        images["fora_baseline"] = evaluator.run(fora).images
    return images


def generate_grid(model: Any, schedule: Schedule, conditions: list[Any] | None, guidance: float | None, seed: int,
                  path: Path) -> Path:
    """Samples generated under ``schedule``, one column per condition (class labels for DiT, prompts for
    PixArt; ``None``: ten of the pipeline's default calibration conditions); ``guidance=None`` keeps the
    pipeline's default scale. Raises ``ValueError`` for conditions the pipeline does not take."""
    import torch

    from procache_opt.models import load_pipeline
    from procache_opt.pipelines import adapter_for
    from procache_opt.runtime import apply

    pipe = load_pipeline(model)
    adapter = adapter_for(pipe)
    if conditions is None:
        conditions = list(adapter.default_conditions(pipe, 10, "search"))
    adapter.validate(pipe, conditions)  # an untrained or missing class row is refused, not drawn
    generator = torch.Generator().manual_seed(seed)
    scale = {} if guidance is None else {"guidance_scale": guidance}
    with apply(pipe, schedule):
        images = pipe(**adapter.call_kwargs(pipe, conditions), num_inference_steps=schedule.num_steps,
                      generator=generator, output_type="pt", **scale).images
    row = f"{schedule.num_full} of {schedule.num_steps}\nsteps FULL"
    columns = [f"class {c}" if isinstance(c, int) else _short(str(c)) for c in conditions]
    return save_labelled_rows([(row, images)], path, columns=columns)


def _short(text: str, width: int = 18) -> str:
    """A column title: ``text`` cut to ``width`` characters."""
    return text if len(text) <= width else text[: width - 1] + "…"


#: Each image is drawn this many inches wide, at :data:`_DPI`: 100 pixels, so a 32-pixel sample is enlarged 3x.
_CELL_INCHES, _LABEL_INCHES, _DPI = 1.0, 2.2, 100


def save_labelled_rows(rows: list[tuple[str, Any]], path: Path, columns: list[str] | None = None) -> Path:
    """A grid of images with a label left of each row (and titles over the columns), enlarged without smoothing."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    count = min(len(images) for _, images in rows)
    top = 0.3 if columns else 0.05
    width, height = _LABEL_INCHES + _CELL_INCHES * count, _CELL_INCHES * len(rows) + top + 0.05
    fig, axes = plt.subplots(len(rows), count, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=_LABEL_INCHES / width, right=1 - 0.05 / width, bottom=0.05 / height,
                        top=1 - top / height, wspace=0.04, hspace=0.04)
    for r, (label, images) in enumerate(rows):
        for c in range(count):
            ax = axes[r, c]
            ax.imshow(images[c].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and columns:
                ax.set_title(columns[c], fontsize=8)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8, labelpad=6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, metadata={"Software": None})
    plt.close(fig)
    return path
