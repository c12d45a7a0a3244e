"""SaliencyMonitor in real Trainer runs: overlays per probe image over epochs, drift scalars, resume."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _cbtiny import event_accumulator, make_module, make_trainer

from callbacks.saliency_monitor import SaliencyMonitor, heat_overlay, saliency_drift


def test_saliency_drift_is_zero_for_same_maps_and_one_for_disjoint_maps() -> None:
    a = torch.zeros(2, 1, 4, 4)
    a[0, 0, 0, 0] = 1
    a[1, 0, 3, 3] = 1
    b = a.flip(0)
    assert torch.allclose(saliency_drift(a, a), torch.zeros(2), atol=1e-6)
    assert torch.allclose(saliency_drift(a, b), torch.ones(2))
    up = saliency_drift(torch.ones(2, 1, 2, 2), torch.ones(2, 1, 8, 8))  # resized to the current resolution
    assert torch.allclose(up, torch.zeros(2), atol=1e-6)
    with pytest.raises(ValueError, match="Expected `previous` and `current`"):
        saliency_drift(a, a[:1])


def test_heat_overlay_colours_high_saliency_red_and_low_blue() -> None:
    img = torch.zeros(1, 1, 1, 2)
    maps = torch.tensor([[[[0.0, 1.0]]]])
    out = heat_overlay(img, maps, alpha=1.0)
    assert out[0, :, 0, 0].tolist() == [0.0, 0.0, 0.5]  # dark blue
    assert out[0, :, 0, 1].tolist() == [0.5, 0.0, 0.0]  # dark red
    with pytest.raises(ValueError, match="Expected `maps` of shape"):
        heat_overlay(img, torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layer": ""}, "Expected `layer` to be a dotted module name"),
        ({"layer": "x", "method": "lime"}, "Expected `method` to be one of"),
        ({"layer": "x", "explain": "label"}, "Expected `explain` to be one of"),
        ({"layer": "x", "num_images": -1}, "Expected `num_images`"),
        ({"layer": "x", "drift_size": 0}, "Expected `drift_size`"),
    ],
)
def test_saliency_monitor_rejects_bad_configuration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SaliencyMonitor(**kwargs)


def test_unknown_layer_fails_at_setup_with_nearest_names(tmp_path: Any) -> None:
    mon = SaliencyMonitor("layr1")
    with pytest.raises(ValueError, match="layer1"):
        make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1, logger=False).fit(
            make_module("pytorch_lightning")
        )


def test_overlays_and_drift_land_in_tensorboard_once_per_run(tmp_path: Any) -> None:
    import pytorch_lightning as pl

    mon = SaliencyMonitor("layer1", num_images=3, probe_size=10, every_n_epochs=1)
    kept: list[torch.Tensor] = []  # the maps the monitor keeps after each run, in probe order

    class Keep(pl.Callback):  # runs after the monitor at each epoch end
        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            kept.append(torch.stack([mon._previous[i] for i in sorted(mon._previous)]))

    make_trainer("pytorch_lightning", tmp_path, [mon, Keep()], max_epochs=3).fit(make_module("pytorch_lightning"))
    acc = event_accumulator(tmp_path / "run" / "version_0")
    tags = acc.Tags()
    assert {f"saliency/overlay/probe_{i:02d}" for i in range(3)} | {"saliency/overlays"} <= set(tags["images"])
    assert "saliency/overlay/probe_03" not in tags["images"]
    assert [e.step for e in acc.Images("saliency/overlay/probe_00")] == [3, 6, 9]  # one per epoch, slider-able
    assert {"saliency/drift/mean", "saliency/drift/max", "saliency/drift/probe_02"} <= set(tags["scalars"])
    drift = [e.value for e in acc.Scalars("saliency/drift/mean")]
    expected = [saliency_drift(a, b).mean().item() for a, b in zip(kept, kept[1:], strict=False)]
    assert len(kept) == 3 and drift == pytest.approx(expected, abs=1e-6)
    assert [e.value for e in acc.Scalars("saliency/drift/max")] == pytest.approx(
        [saliency_drift(a, b).max().item() for a, b in zip(kept, kept[1:], strict=False)], abs=1e-6)
    assert len(mon._previous) == 10 and all(v.shape == (1, 16, 16) for v in mon._previous.values())

    import io

    import numpy as np
    from PIL import Image

    pair = np.asarray(Image.open(io.BytesIO(acc.Images("saliency/overlay/probe_00")[0].encoded_image_string)))
    assert pair.shape[1] == 2 + 2 * (128 + 2)  # two 8 px tiles enlarged to the default 128 px
    band = pair[: pair.shape[0] - (128 + 4), :, :3]  # the caption above the pair
    assert band.shape[0] > 10 and 0.005 < (band.mean(axis=2) < 100).mean() < 0.5


def test_saliency_caption_says_true_and_predicted_class_and_the_concepts() -> None:
    from callbacks.saliency_monitor import saliency_caption

    assert saliency_caption(1, "0", "2", []) == ["probe 01 · true 0 · predicted 2 (wrong)", "concepts: none annotated"]
    assert saliency_caption(12, None, None, ["bright", "stripe"]) == ["probe 12", "concepts: bright, stripe"]


def test_gradcam_maps_match_the_engine_on_the_trained_model(tmp_path: Any) -> None:
    from debugger.saliency.cam import GradCAM

    module = make_module("pytorch_lightning")
    mon = SaliencyMonitor("layer1", probe_size=6, every_n_epochs=1, drift_size=8)
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1, logger=False).fit(module)
    probe = mon.probe()
    assert probe is not None
    expected = GradCAM(module, "layer1", upsample=True).attribute(probe.batch.images, "predicted")
    lo = expected.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = expected.flatten(1).amax(1).view(-1, 1, 1, 1)
    expected = torch.nn.functional.adaptive_avg_pool2d((expected - lo) / (hi - lo).clamp_min(1e-12), 8)
    got = torch.stack([mon._previous[i] for i in probe.indices])
    assert torch.allclose(got, expected, atol=1e-5)
