"""``psnr`` and ``ssim``: classic full-reference image metrics on decoded images (torchmetrics).

Both are similarities, so their direction is ``"maximize"`` (the engine negates them in weighted sums)
rather than recast as losses: the numbers stay the ones papers report.
"""

from __future__ import annotations

from procache_opt.objectives._common import paired
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from procache_opt.objective import Objective, RunOutputs, Score

__all__ = ["PSNR", "SSIM"]


class PSNR(Objective):
    """Peak signal-to-noise ratio in dB of each decoded image (in ``[0, 1]``) against the full computation's.

    Identical images have infinite PSNR, which would turn means and weighted sums into ``inf``/``NaN``;
    values are therefore capped at ``max_db`` (100 dB is a mean squared error of 1e-10, far below what
    8-bit output can show).
    """

    name = "psnr"
    direction = "maximize"
    needs = frozenset({"images"})

    def __init__(self, max_db: float = 100.0) -> None:
        if not max_db > 0:
            raise ValueError(f"PSNR max_db={max_db}; must be > 0")
        self.max_db = max_db

    def score(self, run: RunOutputs, reference: RunOutputs) -> Score:
        x, r = paired(run, reference, "images", self.name)
        values = peak_signal_noise_ratio(x, r, data_range=1.0, reduction="none", dim=(1, 2, 3))
        return Score.of(values.clamp(max=self.max_db).cpu())


class SSIM(Objective):
    """Structural similarity (Wang et al., IEEE TIP 2004) of each decoded image against the full computation's.

    Gaussian window with ``sigma`` 1.5 and ``kernel_size`` 11, as in the paper; on images smaller than the
    window the window shrinks to the largest odd size that fits (tiny test models make 16-pixel images).
    ``1`` means identical.
    """

    name = "ssim"
    direction = "maximize"
    needs = frozenset({"images"})

    def __init__(self, kernel_size: int = 11, sigma: float = 1.5) -> None:
        if kernel_size < 3 or kernel_size % 2 == 0 or not sigma > 0:
            raise ValueError(f"SSIM kernel_size={kernel_size}, sigma={sigma}; need an odd kernel >= 3, sigma > 0")
        self.kernel_size = kernel_size
        self.sigma = sigma

    def score(self, run: RunOutputs, reference: RunOutputs) -> Score:
        x, r = paired(run, reference, "images", self.name)
        fits = min(x.shape[-2:])
        kernel = min(self.kernel_size, fits if fits % 2 else fits - 1)
        values = structural_similarity_index_measure(
            x, r, data_range=1.0, kernel_size=kernel, sigma=self.sigma, reduction="none"
        )
        return Score.of(values.cpu())
