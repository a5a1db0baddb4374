"""Search and apply a schedule for facebook/DiT-XL-2-256 on a GPU (needs the checkpoint: downloads ~3 GB).

    python examples/dit_xl_gpu.py

Counts first, without weights, what each budget means for DiT-XL/2 (procache-opt flops does the same).
"""

import torch
from diffusers import DiTPipeline

import procache_opt

print(procache_opt.count_flops("dit-xl-2-256", num_inference_steps=50))

pipe = DiTPipeline.from_pretrained("facebook/DiT-XL-2-256", torch_dtype=torch.float16).to("cuda")
result = procache_opt.search(
    pipe,
    budget_flops=0.35,
    strategy="tpe",
    objective={"feature_error": 1.0},
    n_trials=40,
    num_inference_steps=50,
    guidance_scale=1.5,  # the ProCache / ToCa DiT setting
    storage="runs/dit-xl",  # resumable: run the script again after an interruption
)
print(result.summary())
with result.apply(pipe):
    image = pipe(class_labels=[207], num_inference_steps=50, guidance_scale=1.5).images[0]
image.save("runs/dit-xl/golden_retriever.png")
