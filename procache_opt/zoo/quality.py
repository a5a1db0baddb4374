"""Quality gate for the digits models: do generated samples show the digit that was asked for?

A support-vector classifier trained on real scikit-learn digits judges generated images after they are
averaged back down to 8x8 (the inverse of the training data's preparation). It is a cheap, offline
stand-in for FID that measures what class-conditional guidance is for, and what aggressive caching
breaks first.

Run the full gate (500 samples; `dit-digits`: 50 DDIM steps, guidance 4; `pixart-digits`: 20 DPM-Solver++
steps, guidance 4.5, prompts "a handwritten 7") and draw the sample grid::

    python -m procache_opt.zoo.quality --grid docs/figures/dit_digits_samples.png
    python -m procache_opt.zoo.quality --model pixart-digits --grid docs/figures/pixart_digits_samples.png
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, DiTPipeline
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from procache_opt.zoo.captions import digit_prompt
from procache_opt.zoo.digits_data import to_digit_features
from procache_opt.zoo.train_digits import NUM_DIGITS


def sampling_defaults(pipe: DiffusionPipeline) -> tuple[int, float]:
    """(steps, guidance) each model family is judged at: DiT-XL/2's 50 DDIM steps at guidance 4, PixArt-α's 20
    DPM-Solver++ steps at guidance 4.5 (the ProCache paper's settings)."""
    return (50, 4.0) if isinstance(pipe, DiTPipeline) else (20, 4.5)


def digit_conditions(pipe: DiffusionPipeline, digits: list[int]) -> list[int] | list[str]:
    """What asks ``pipe`` for ``digits``: the labels for class-conditional DiT, "a handwritten 7" for PixArt."""
    return list(digits) if isinstance(pipe, DiTPipeline) else [digit_prompt(d) for d in digits]


@dataclass(frozen=True)
class ReferenceClassifier:
    """The judge, with its accuracy on real digits it did not see (the ceiling for generated ones)."""

    svc: SVC
    heldout_accuracy: float


@dataclass(frozen=True)
class QualityReport:
    """Share of generated samples classified as the requested digit, overall and per digit."""

    accuracy: float
    per_class: tuple[float, ...]
    samples: int
    num_inference_steps: int
    guidance_scale: float
    seconds: float


@lru_cache(maxsize=1)
def reference_classifier(seed: int = 0) -> ReferenceClassifier:
    """SVC (RBF, gamma 0.001, scikit-learn's own digits example) fit on 75% of `load_digits`.

    Fitting takes well under a second, so it is trained on demand and cached, not shipped as a pickle.
    """
    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=seed, stratify=data.target
    )
    svc = SVC(gamma=0.001).fit(x_train, y_train)
    return ReferenceClassifier(svc=svc, heldout_accuracy=float(svc.score(x_test, y_test)))


def generate(
    pipe: DiffusionPipeline,
    class_labels: list[int],
    num_inference_steps: int = 50,
    guidance_scale: float = 4.0,
    seed: int = 0,
) -> np.ndarray:
    """Images (N, H, W, C) in [0, 1] of the digits `class_labels`, seeded so the same call gives the same images."""
    from procache_opt.pipelines import adapter_for

    generator = torch.Generator(device="cpu").manual_seed(seed)
    out = pipe(
        **adapter_for(pipe).call_kwargs(pipe, digit_conditions(pipe, class_labels)),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="np",
    )
    return np.asarray(out.images)


def class_accuracy(
    pipe: DiffusionPipeline,
    per_class: int = 50,
    num_inference_steps: int = 50,
    guidance_scale: float = 4.0,
    seed: int = 0,
    batch_size: int = 50,
) -> QualityReport:
    """Generate `per_class` samples of each digit and score them with `reference_classifier`.

    Batch b (labels cycling 0..9) uses seed `seed + b`, so a result is reproducible and independent of
    everything but the pipeline and these arguments.
    """
    clf = reference_classifier().svc
    labels = [i % NUM_DIGITS for i in range(per_class * NUM_DIGITS)]
    started = time.perf_counter()
    predicted = []
    for b, start in enumerate(range(0, len(labels), batch_size)):
        images = generate(
            pipe, labels[start : start + batch_size], num_inference_steps, guidance_scale, seed + b
        )
        predicted.append(clf.predict(to_digit_features(images)))
    hits = np.concatenate(predicted) == np.asarray(labels)
    per_digit = tuple(float(hits[np.asarray(labels) == d].mean()) for d in range(NUM_DIGITS))
    return QualityReport(
        accuracy=float(hits.mean()),
        per_class=per_digit,
        samples=len(labels),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        seconds=time.perf_counter() - started,
    )


def sample_grid(pipe: DiffusionPipeline, seeds: int = 8, scale: int = 3, **kwargs: float) -> Image.Image:
    """A grid with one row per digit and one column per seed (every column is one batch of 10)."""
    columns = [generate(pipe, list(range(NUM_DIGITS)), seed=s, **kwargs) for s in range(seeds)]
    size = columns[0].shape[1]
    grid = np.ones((NUM_DIGITS * (size + 2), seeds * (size + 2), 3), dtype=np.float32)
    for c, images in enumerate(columns):
        for r, image in enumerate(images):
            grid[
                r * (size + 2) + 1 : r * (size + 2) + 1 + size, c * (size + 2) + 1 : c * (size + 2) + 1 + size
            ] = image[..., :3] if image.shape[-1] >= 3 else image
    picture = Image.fromarray((grid * 255).round().astype(np.uint8))
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def main(argv: list[str] | None = None) -> None:
    """Print the gate's figure for a zoo model or a folder, optionally writing the sample grid."""
    from procache_opt.models import load_pipeline

    parser = argparse.ArgumentParser(description="digits models' quality gate")
    parser.add_argument("--model", default="dit-digits", help="zoo name or pipeline folder")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--steps", type=int, default=None, help="default: 50 for DiT, 20 for PixArt")
    parser.add_argument("--guidance", type=float, default=None, help="default: 4.0 for DiT, 4.5 for PixArt")
    parser.add_argument("--grid", type=Path, default=None, help="write a 10 x 8 sample grid PNG here")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    pipe = load_pipeline(args.model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    default_steps, default_guidance = sampling_defaults(pipe)
    steps = args.steps if args.steps is not None else default_steps
    guidance = args.guidance if args.guidance is not None else default_guidance
    ref = reference_classifier()
    print(f"reference SVC accuracy on held-out real digits: {ref.heldout_accuracy:.4f}")
    report = class_accuracy(pipe, args.per_class, steps, guidance)
    per_class = " ".join(f"{d}:{a:.2f}" for d, a in enumerate(report.per_class))
    print(
        f"class accuracy {report.accuracy:.4f} on {report.samples} samples "
        f"({report.num_inference_steps} steps of {type(pipe.scheduler).__name__}, guidance "
        f"{report.guidance_scale}, {report.seconds:.0f} s)"
    )
    print(f"per class: {per_class}")
    if args.grid is not None:
        sample_grid(pipe, num_inference_steps=steps, guidance_scale=guidance).save(args.grid)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
