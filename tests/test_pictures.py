"""What a user sees: schedule pictures with a legend for every action, the runtime's own report of what it did."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from procache_opt import Schedule
from procache_opt.block_counts import generation_blocks
from procache_opt.plots import ACTION_COLOURS, draw_schedule
from procache_opt.runtime import apply
from procache_opt.testing import tiny_dit_pipeline


def test_every_action_has_its_own_colour_and_a_legend_entry() -> None:
    schedule = Schedule.from_pattern([1, 0, 2, 3, 4])
    fig, ax = plt.subplots()
    draw_schedule(ax, schedule, "per-depth")
    image = ax.images[0]
    colours = [tuple(np.round(image.to_rgba(image.get_array())[0, step], 3)) for step in range(5)]
    assert len(set(colours)) == 5  # DEEP and SHALLOW were drawn in SELECTIVE's orange before
    assert [text.get_text().split(":")[0] for text in ax.get_legend().get_texts()] == [
        "FULL", "REUSE", "SELECTIVE", "DEEP", "SHALLOW"]
    plain = Schedule.from_pattern([1, 0, 1], forecast_order=1)
    fig, ax = plt.subplots()
    draw_schedule(ax, plain)
    texts = [text.get_text() for text in ax.get_legend().get_texts()]
    assert len(texts) == 3 and "forecast" in texts[1]  # FULL, REUSE, SELECTIVE always; REUSE says it forecasts
    assert len(ACTION_COLOURS) == 5
    plt.close("all")


def test_the_handle_reports_what_the_runtime_did() -> None:
    pipe = tiny_dit_pipeline()
    pipe.set_progress_bar_config(disable=True)
    schedule = Schedule.from_pattern([1, 0, 2, 1, 0, 1, 0, 0], forecast_order=1)
    transformer = pipe.transformer
    with apply(pipe, schedule) as handle:
        assert "no transformer call yet" in handle.summary()
        for _ in range(2):
            pipe(class_labels=[1, 2], num_inference_steps=8, output_type="np")
        stats, summary = handle.stats, handle.summary()
    assert stats.generations == 2 and stats.calls == 16
    assert dict(stats.steps) == {"FULL": 6, "REUSE": 8, "SELECTIVE": 2}
    # step 1 reuses as cached (one FULL step so far), steps 4, 6, 7 forecast; step 2 refreshes tokens in block 3
    assert dict(stats.blocks) == {"computed": 24, "reused": 14, "selective": 2, "forecast": 24}
    assert stats.blocks == generation_blocks(schedule, 4) + generation_blocks(schedule, 4)
    assert "steps per generation: 3 FULL, 4 REUSE, 1 SELECTIVE" in summary
    assert "computed 37.5%, selective 3.1%, reused 21.9%, forecast 37.5%" in summary
    assert stats.clock.seconds() > 0 and "ms per generation" in summary
    assert not transformer._forward_hooks and not transformer._forward_pre_hooks  # removed with the handle


def test_loading_the_bundled_model_prints_no_advice_a_user_cannot_act_on() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "from procache_opt import zoo; zoo.load('dit-digits')"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
    assert "accelerate" not in out.stderr and "warn" not in out.stderr.lower()  # accelerate is a dependency now
