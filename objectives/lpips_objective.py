"""``lpips``: the Learned Perceptual Image Patch Similarity (Zhang et al., "The Unreasonable Effectiveness of
Deep Features as a Perceptual Metric", CVPR 2018), from the ``lpips`` package.

LPIPS compares deep features of an ImageNet classifier (AlexNet by default, VGG-16 optional), weighted by
linear heads trained on human similarity judgements. The heads ship with the ``lpips`` package; the
backbone's ImageNet weights are downloaded by torchvision on first use into ``torch.hub.get_dir()/checkpoints``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from procache_opt.objectives._common import paired
from torchvision.models import AlexNet_Weights, VGG16_Weights

from procache_opt.objective import Objective, RunOutputs, Score

__all__ = ["LPIPSObjective", "LPIPSWeightsUnavailableError", "RANDOM_BACKBONE"]

#: ``backbone_weights`` value for a randomly initialised backbone: only for testing the code path.
RANDOM_BACKBONE = "random_NOT_LPIPS"

_BACKBONE_URLS = {"alex": AlexNet_Weights.IMAGENET1K_V1.url, "vgg": VGG16_Weights.IMAGENET1K_V1.url}


class LPIPSWeightsUnavailableError(RuntimeError):
    """The backbone's ImageNet weights are not on disk and could not be downloaded."""


def _load_lpips(net: str, random_backbone: bool) -> torch.nn.Module:
    from procache_opt._optional import require

    lpips = require("lpips", "lpips", "the lpips objective")

    url = _BACKBONE_URLS[net]
    try:
        with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            return lpips.LPIPS(net=net, pnet_rand=random_backbone, verbose=False).eval()
    except OSError as exc:  # urllib's URLError (offline) is an OSError
        filename = url.rsplit("/", 1)[-1]
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        raise LPIPSWeightsUnavailableError(
            f"LPIPS ({net}) needs its backbone's ImageNet weights, {filename}, which are not in {folder} and could "
            f"not be downloaded ({exc}). Download {url} on a machine with internet access and put the file at "
            f"{folder / filename} (the folder follows TORCH_HOME). Objectives that need no downloaded weights: "
            "feature_error, psnr, ssim."
        ) from exc


class LPIPSObjective(Objective):
    """LPIPS distance of each decoded image to the full computation's (0 = identical; lower is better).

    Images arrive in ``[0, 1]`` and are mapped to ``[-1, 1]``, the range LPIPS expects; grayscale images are
    repeated to 3 channels. Images whose short side is below ``min_size`` pixels are upsampled (bilinear)
    to it: AlexNet's first convolution has stride 4 and two max-pools follow, so a 16-pixel image leaves
    its deepest LPIPS layers with no spatial extent at all; LPIPS's heads were trained on 64 x 64 patches
    (the BAPPS dataset of Zhang et al.), hence 64 by default.

    Args:
        net: ``"alex"`` (the LPIPS authors' recommended forward metric) or ``"vgg"``.
        backbone_weights: ``"imagenet"`` for LPIPS; ``"random_NOT_LPIPS"`` builds the same network with a random
            backbone, only to test the code path without downloads. Its scores are not LPIPS and are
            reported under the name ``lpips_random_backbone_NOT_LPIPS``.
        min_size: Smallest image side fed to the network.

    Raises:
        LPIPSWeightsUnavailableError: offline, with the backbone weights not yet in the torch hub cache; the
            message names the file, the folder and the URL.
    """

    direction = "minimize"
    needs = frozenset({"images"})

    def __init__(self, net: Literal["alex", "vgg"] = "alex",
                 backbone_weights: Literal["imagenet", "random_NOT_LPIPS"] = "imagenet", min_size: int = 64) -> None:
        if net not in _BACKBONE_URLS:
            raise ValueError(f"LPIPS net={net!r}; allowed: {sorted(_BACKBONE_URLS)}")
        if backbone_weights not in ("imagenet", RANDOM_BACKBONE):
            raise ValueError(f"LPIPS backbone_weights={backbone_weights!r}; allowed: 'imagenet', {RANDOM_BACKBONE!r}")
        if min_size < 1:
            raise ValueError(f"LPIPS min_size={min_size}; must be >= 1")
        random_backbone = backbone_weights == RANDOM_BACKBONE
        self.name = "lpips_random_backbone_NOT_LPIPS" if random_backbone else "lpips"
        self.net = net
        self.min_size = min_size
        self._model = _load_lpips(net, random_backbone)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        height, width = images.shape[-2:]
        if min(height, width) < self.min_size:
            scale = self.min_size / min(height, width)
            size = (round(height * scale), round(width * scale))
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return images * 2 - 1

    def score(self, run: RunOutputs, reference: RunOutputs) -> Score:
        x, r = paired(run, reference, "images", self.name)
        model = self._model.to(x.device)
        with torch.inference_mode():
            values = model(self._prepare(x), self._prepare(r))
        return Score.of(values.reshape(-1).cpu())
