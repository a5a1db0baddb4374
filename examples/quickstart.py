"""Search a schedule for the bundled digits DiT, apply it, and save it next to the model.

    python examples/quickstart.py

Runs offline on a laptop CPU in about a minute.
"""

import torch

import procache_opt

torch.manual_seed(0)
result = procache_opt.search("dit-digits", budget_flops=0.5, strategy="tpe", n_trials=20, storage="runs/quickstart")
print(result.summary())

pipe = procache_opt.zoo.load("dit-digits")
with procache_opt.apply(pipe, result.best):
    images = pipe(class_labels=[3, 1, 4, 1, 5], num_inference_steps=50, guidance_scale=4.0).images
images[0].save("runs/quickstart/three.png")
result.best.save("runs/quickstart/schedule.json")
