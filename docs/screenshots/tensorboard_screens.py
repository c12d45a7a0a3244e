"""TensorBoard as a person sees it: train with the monitors, start TensorBoard, screenshot it in headless Chromium.

    python docs/screenshots/tensorboard_screens.py                 # demo run on planted concepts, then screens
    python docs/screenshots/tensorboard_screens.py --logdir RUNS    # screens of an existing run directory

Steps:

1. (without ``--logdir``) train the baseline ``ResNetClassifier`` for a few epochs on the built-in planted
   concepts data with ``default_monitors("layer2", "layer3")`` and a ``FailureDrivenAugmentation``;
2. start ``tensorboard --logdir ... --samples_per_plugin images=100`` on a free local port and check through
   its HTTP API that the galleries, overlays, matrices, grid and projector data are there (exit status 1 if not);
3. open each view in headless Chromium (``--headless --no-sandbox --disable-gpu --disable-background-networking
   --disable-component-update --no-first-run``) and write PNGs next to this script, reduced to 256 colours so
   they stay small. The projector needs WebGL, which ``--disable-gpu`` turns off, so its screen uses
   SwiftShader (software WebGL) instead of that flag.

``--only NAME`` (repeatable) takes only some of the screens (names as in ``SCREENS``: ``images_concept_galleries``
...); ``--no-check`` skips step 2 (e.g. for a run without every monitor).

Chromium comes from Debian's ``chromium`` package (``apt-get install chromium``); ``--chromium`` points elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BASE_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
]
NO_GPU = ["--disable-gpu"]
SOFTWARE_WEBGL = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]

# name, URL fragment, window size, needs WebGL
SCREENS: list[tuple[str, str, tuple[int, int], bool]] = [
    ("images_concept_galleries", "images&tagFilter=concepts%2Fgallery", (1400, 1300), False),
    ("images_failure_images", "images&tagFilter=concepts%2Ffailure_images", (1400, 1000), False),
    ("images_concept_grid", "images&tagFilter=concepts%2Fgrid", (1400, 1000), False),
    ("images_saliency_overlays", "images&tagFilter=saliency%2Foverlay%2F", (1400, 1100), False),
    ("images_confusion_matrices", "images&tagFilter=confusion%2F(matrix%7Cdiff)%2Fshadow", (1400, 1000), False),
    ("text_failure_ranking_and_policy", "text", (1400, 1300), False),
    ("scalars_slices", "scalars&_smoothingWeight=0&_ignoreYOutliers=false&tagFilter=confusion%2F(accuracy%7Clift)%2F",
     (1400, 1100), False),
    ("projector_patches", "projector", (1400, 1000), True),
]


def demo_run(logdir: Path, epochs: int) -> None:
    """Train the planted-concepts baseline with the monitors, logging to ``logdir``."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.path.insert(0, str(ROOT))
    import pytorch_lightning as pl
    import torch

    from callbacks import FailureDrivenAugmentation, default_monitors
    from recipes.baseline import fit_baseline
    from recipes.data import PlantedConceptsDataModule
    from recipes.models import ResNetClassifier

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    pl.seed_everything(0, workers=True)  # the same run, and the same screens, every time
    dm = PlantedConceptsDataModule(train_size=3000, val_size=600, test_size=64, batch_size=64)
    monitors = default_monitors("layer2", "layer3", probe_size=96)
    logger = pl.loggers.TensorBoardLogger(str(logdir), name="planted", version=0, default_hp_metric=False)
    fit_baseline(dm, ResNetClassifier(), max_epochs=epochs, logger=logger,
                 callbacks=[*monitors, FailureDrivenAugmentation(fallback="HideAndSeek")])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - local TensorBoard only
        return json.loads(r.read().decode())


def wait_for(url: str, seconds: float = 60.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            get_json(url)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"Expected TensorBoard to answer at {url} within {seconds:.0f}s, but it did not.")


def check_tags(base: str) -> list[str]:
    """Problems with what TensorBoard serves (empty when the expected views have data)."""
    problems = []
    images = get_json(f"{base}/data/plugin/images/tags")
    tags = {t for run in images.values() for t in run}
    if not any(t.startswith("concepts/gallery/concept_") for t in tags):
        problems.append(f"no concept gallery tag concepts/gallery/concept_NN (have {sorted(tags)[:12]}...)")
    for want in ("concepts/grid", "saliency/overlay/probe_00", "saliency/overlays", "confusion/matrix/shadow"):
        if want not in tags:
            problems.append(f"image tag {want!r} missing (have {sorted(tags)[:12]}...)")
    runs = get_json(f"{base}/data/plugin/projector/runs")
    if not runs:
        problems.append("projector has no runs")
    else:
        config = get_json(f"{base}/data/plugin/projector/info?run={urllib.parse.quote(runs[0])}")
        if not config.get("embeddings"):
            problems.append("projector run has no embeddings")
        elif not any(e.get("sprite") for e in config["embeddings"]):
            problems.append("projector embeddings have no sprite thumbnails")
    return problems


def screenshot(chromium: str, url: str, out: Path, size: tuple[int, int], webgl: bool, budget_ms: int) -> None:
    flags = BASE_FLAGS + (SOFTWARE_WEBGL if webgl else NO_GPU)
    cmd = [chromium, *flags, f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}",
           f"--screenshot={out}", url]
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([*cmd, f"--user-data-dir={profile}"], check=True, capture_output=True, timeout=180)
    if not out.exists() or out.stat().st_size < 10_000:
        raise RuntimeError(f"Expected a screenshot at {out}, but Chromium wrote nothing useful.")
    from PIL import Image

    with Image.open(out) as shot:
        small = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(out, optimize=True)


@contextlib.contextmanager
def serve(logdir: Path) -> Iterator[str]:
    """TensorBoard on a free port of 127.0.0.1 over ``logdir``, for the ``with`` block; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tb = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port), "--host",
         "127.0.0.1", "--samples_per_plugin", "images=100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"{base}/data/plugins_listing")
        time.sleep(3)  # first scan of the event files
        yield base
    finally:
        tb.terminate()
        tb.wait(timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", type=Path, help="existing TensorBoard run directory (default: make a demo run)")
    parser.add_argument("--out", type=Path, default=HERE, help="where the PNGs go")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time each page gets to render")
    parser.add_argument("--only", action="append", help="take only this screen (repeatable)")
    parser.add_argument("--no-check", action="store_true", help="do not check that every view has data")
    args = parser.parse_args()
    screens = [sc for sc in SCREENS if not args.only or sc[0] in args.only]
    unknown = set(args.only or ()) - {sc[0] for sc in SCREENS}
    if unknown:
        raise SystemExit(f"Expected --only to name screens of {[sc[0] for sc in SCREENS]}, but got {sorted(unknown)}.")

    tmp = None
    logdir = args.logdir
    if logdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="conceptfix-tb-")
        logdir = Path(tmp.name)
        print(f"training the demo run into {logdir} ...", flush=True)
        demo_run(logdir, args.epochs)

    try:
        with serve(logdir) as base:
            problems = [] if args.no_check else check_tags(base)
            for p in problems:
                print(f"PROBLEM: {p}", flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            for name, fragment, size, webgl in screens:
                out = args.out / f"{name}.png"
                screenshot(args.chromium, f"{base}/?darkMode=false#{fragment}", out, size, webgl, args.budget_ms)
                print(f"wrote {out}", flush=True)
            return 1 if problems else 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
