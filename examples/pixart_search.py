"""Search a schedule for PixArt-α 512 px with your own calibration prompts (needs the checkpoint and a GPU).

    python examples/pixart_search.py
"""

import torch
from diffusers import PixArtAlphaPipeline

import procache_opt
from procache_opt import Calibration

pipe = PixArtAlphaPipeline.from_pretrained("PixArt-alpha/PixArt-XL-2-512x512", torch_dtype=torch.float16).to("cuda")
prompts = ("a red fox in snow", "a bowl of ramen, studio light", "an old lighthouse at dusk", "a city at night")
search_set = Calibration(seeds=(0, 1, 2, 3), conditions=prompts, name="search")
heldout_set = Calibration(seeds=(100, 101), conditions=("a cat on a sofa", "mountains at sunrise"), name="heldout")

result = procache_opt.search(
    pipe,
    budget_flops=0.5,
    strategy="evolutionary",
    n_trials=30,
    num_inference_steps=20,
    calibration=search_set,
    heldout=heldout_set,
    storage="runs/pixart-512",
)
print(result.summary())
