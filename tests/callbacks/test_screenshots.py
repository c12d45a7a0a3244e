"""The screenshot script (docs/screenshots/tensorboard_screens.py): TensorBoard served locally, views in Chromium."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from _cbtiny import make_module, make_trainer

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "tensorboard_screens.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tensorboard_screens", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_unknown_screen_is_refused_before_any_training(monkeypatch: pytest.MonkeyPatch) -> None:
    screens = _script()
    monkeypatch.setattr(sys, "argv", ["tensorboard_screens.py", "--only", "images_nothing"])
    with pytest.raises(SystemExit, match="Expected --only to name screens of .*images_concept_galleries"):
        screens.main()
    assert len({name for name, *_ in screens.SCREENS}) == len(screens.SCREENS)


@pytest.mark.slow
def test_the_gallery_screen_of_a_tiny_run_is_drawn(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): no browser for screenshots")
    import numpy as np
    from PIL import Image

    from callbacks import ConceptMonitor

    mon = ConceptMonitor("layer1", patches="window", n_concepts=3, top_k=8, min_support=2, max_galleries=2,
                         grid=None, projector=False, probe_size=12,
                         analysis_kwargs={"patch_kwargs": {"sizes": (4,), "strides": (2,)}})
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1).fit(make_module("pytorch_lightning"))
    screens = _script()
    out = tmp_path / "gallery.png"
    with screens.serve(tmp_path / "run") as base:
        tags = screens.get_json(f"{base}/data/plugin/images/tags")
        assert any(t.startswith("concepts/gallery/concept_") for run in tags.values() for t in run)
        screens.screenshot(chromium, f"{base}/?darkMode=false#images&tagFilter=concepts%2Fgallery", out,
                           (1000, 800), False, 15000)
    shot = np.asarray(Image.open(out).convert("RGB"))
    assert shot.shape[:2] == (800, 1000)
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50  # a page with pictures, not a blank one
