"""The handwritten digits that ship inside scikit-learn, as images for the `dit-digits` model.

`sklearn.datasets.load_digits` holds 1,797 grey 8x8 images with values 0..16. The model works at 32x32
RGB (grey replicated into three channels) so that its VAE, latent shape and output look like those of
`facebook/DiT-XL-2-256`, only small, and so that image objectives written for RGB pipelines (LPIPS,
PSNR, SSIM) apply unchanged. The quality gate goes the other way: generated 32x32 images are averaged
back to 8x8 on the 0..16 scale, the form the reference classifier was trained on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

#: Side of the images the model sees and generates.
IMAGE_SIZE = 32
#: Side of the original scikit-learn digits.
DIGIT_SIZE = 8
#: Largest pixel value in `load_digits`.
DIGIT_MAX = 16.0


def digits_dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (images (N, 3, 32, 32) in [-1, 1], labels (N,) int64).

    Bilinear upscaling keeps the strokes smooth, which a VAE reconstructs far more easily than the blocky
    nearest-neighbour version; `to_digit_features` undoes it well enough for the classifier (see tests).
    """
    data = load_digits()
    small = torch.from_numpy(data.images).float().unsqueeze(1) / DIGIT_MAX * 2.0 - 1.0
    big = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return big.clamp(-1.0, 1.0).repeat(1, 3, 1, 1), torch.from_numpy(data.target).long()


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate all images by (dy, dx) pixels, filling the uncovered border with background (-1)."""
    m = max(abs(dy), abs(dx))
    _, _, h, w = images.shape
    padded = F.pad(images, (m, m, m, m), value=-1.0)
    return padded[:, :, m - dy : m - dy + h, m - dx : m - dx + w]


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random offset of up to `max_shift` pixels in x and y.

    1,797 images are few for a generative model; small shifts are the augmentation that cannot change
    which digit an image shows (flips, DiT's ImageNet augmentation, would turn a 2 into something else).
    """
    offsets = torch.randint(-max_shift, max_shift + 1, (len(images), 2), generator=generator)
    return torch.cat(
        [shift(img[None], dy, dx) for img, (dy, dx) in zip(images, offsets.tolist(), strict=True)]
    )


def to_digit_features(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pipeline output (N, H, W, C) or (N, C, H, W) in [0, 1] -> (N, 64) features on the 0..16 scale.

    Averages channels and then 4x4 blocks (area downscaling), the inverse of the dataset's preparation,
    so generated images are judged in the same space as `load_digits`.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images with 4 dimensions, got shape {tuple(x.shape)}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    x = x.mean(dim=1, keepdim=True)
    small = F.adaptive_avg_pool2d(x, DIGIT_SIZE)
    return (small.clamp(0.0, 1.0) * DIGIT_MAX).reshape(len(x), -1).numpy()
