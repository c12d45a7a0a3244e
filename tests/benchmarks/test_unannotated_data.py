"""The unannotated benchmark folders: readable as a user's folder, failures where the ground truth says, seeded."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.unannotated_data import (
    DEFAULT_RATES,
    SPLITS,
    UnannotatedFolder,
    apply_failure,
    choose_failures,
    clean_images,
    folder_options,
    unannotated_folder,
    write_folder,
)
from recipes.data import ImageFolderDataModule
from recipes.data.fashion import DEFAULT_ROOT

# Enough training images that every class appears in train (a val/test class missing from train is an error).
TINY = {"train": 100, "val": 20, "test": 30, "probe": 20}
HAS_FASHION = any((DEFAULT_ROOT / name).is_file() for name in ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"))
CASES = [("planted", "shadow"), ("planted", "blur"), ("planted", "noise"),
         pytest.param("fashion", "shadow", marks=pytest.mark.skipif(not HAS_FASHION, reason="no Fashion-MNIST")),
         pytest.param("fashion", "blur", marks=pytest.mark.skipif(not HAS_FASHION, reason="no Fashion-MNIST"))]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One folder per case, written once for the module."""
    made: dict[tuple[str, str], UnannotatedFolder] = {}

    def get(dataset: str, failure: str) -> UnannotatedFolder:
        if (dataset, failure) not in made:
            out = tmp_path_factory.mktemp(f"{dataset}-{failure}") / "folder"
            made[dataset, failure] = write_folder(out, dataset, failure, TINY, seed=3)
        return made[dataset, failure]

    return get


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.mark.parametrize(("dataset", "failure"), CASES)
def test_folder_reads_as_split_folders_with_the_probe_beside_them(written, dataset, failure):
    folder = written(dataset, failure)
    assert sorted(p.name for p in folder.root.iterdir()) == sorted(SPLITS)
    channels = 3 if dataset == "planted" else 1
    dm = ImageFolderDataModule(str(folder.root), image_size=32, channels=channels, batch_size=8)
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [TINY["train"], TINY["val"], TINY["test"]]
    assert dm.num_classes == 10
    assert tuple(dm.dataset("train")[0]["image"].shape) == (channels, 32, 32)
    assert len(list(folder.probe_root.glob("*/*.png"))) == TINY["probe"]
    # Nothing besides the class folders and images the product reads.
    assert {p.suffix for p in folder.root.rglob("*") if p.is_file()} == {".png"}


@pytest.mark.parametrize(("dataset", "failure"), CASES)
def test_each_split_carries_the_failure_at_its_rate(written, dataset, failure):
    folder = written(dataset, failure)
    for split in SPLITS:
        truth = folder.truth(split)
        assert len(truth) == TINY[split]
        assert sum(truth.values()) == round(DEFAULT_RATES[split] * TINY[split])
        assert set(truth) == {str(p.relative_to(folder.root)) for p in (folder.root / split).glob("*/*.png")}


@pytest.mark.parametrize(("dataset", "failure"), CASES)
def test_failure_files_differ_from_their_clean_version_only_inside_the_footprint(written, dataset, failure):
    folder = written(dataset, failure)
    for split in ("train", "test"):
        clean, labels, classes = clean_images(dataset, split, TINY, seed=3)
        truth, footprints = folder.truth(split), folder.footprints(split)
        assert set(footprints) == {f for f, bad in truth.items() if bad}
        for name, bad in truth.items():
            i = int(Path(name).stem)
            assert Path(name).parent.name == classes[labels[i]]
            seen = pixels(folder.root / name).reshape(clean[i].shape)
            changed = (seen != clean[i]).any(-1)
            if bad:
                assert changed.any(), name
                assert not (changed & ~footprints[name]).any(), name
                assert footprints[name].any(), name
            else:
                assert not changed.any(), name


def test_same_seed_writes_the_same_folder_and_another_seed_another(tmp_path):
    a = write_folder(tmp_path / "a", "planted", "shadow", TINY, seed=5)
    b = write_folder(tmp_path / "b", "planted", "shadow", TINY, seed=5)
    c = write_folder(tmp_path / "c", "planted", "shadow", TINY, seed=6)
    files = sorted(str(p.relative_to(a.root)) for p in a.root.rglob("*.png"))
    assert files == sorted(str(p.relative_to(b.root)) for p in b.root.rglob("*.png"))
    assert all(np.array_equal(pixels(a.root / f), pixels(b.root / f)) for f in files)
    assert a.truth("test") == b.truth("test")
    assert all(np.array_equal(m, b.footprints("test")[f]) for f, m in a.footprints("test").items())
    assert a.truth("test") != c.truth("test")


def test_seeded_without_touching_the_global_numpy_generator():
    np.random.seed(0)
    expected = np.random.random()
    np.random.seed(0)
    x = np.full((3, 16, 16, 3), 180, np.uint8)
    first, _ = apply_failure(x, "shadow", seed=1)
    second, _ = apply_failure(x, "shadow", seed=1)
    assert np.random.random() == expected
    assert np.array_equal(first, second)
    assert not np.array_equal(first, apply_failure(x, "shadow", seed=2)[0])


@pytest.mark.parametrize("failure", ["blur", "noise"])
def test_partial_failures_leave_the_rest_of_the_image_alone(failure):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
    out, where = apply_failure(x, failure, seed=0, cover=(0.5, 0.5))
    assert np.array_equal(out[~where], x[~where])
    assert (out[where] != x[where]).mean() > 0.5
    assert where.sum(axis=(1, 2)).tolist() == [144] * 4


def test_choose_failures_picks_exactly_the_rate():
    chosen = choose_failures(1000, 0.03, np.random.default_rng(0))
    assert chosen.sum() == 30
    assert not np.array_equal(chosen, choose_failures(1000, 0.03, np.random.default_rng(1)))


def test_cache_reuses_a_finished_folder_and_keys_it_by_the_options(tmp_path):
    first = unannotated_folder("planted", "blur", TINY, seed=0, cache_dir=tmp_path)
    stamp = (first.path / "generator.json").stat().st_mtime_ns
    again = unannotated_folder("planted", "blur", TINY, seed=0, cache_dir=tmp_path)
    assert again.path == first.path and (again.path / "generator.json").stat().st_mtime_ns == stamp
    other = unannotated_folder("planted", "blur", TINY, params={"blur_limit": (5, 5)}, seed=0, cache_dir=tmp_path)
    assert other.path != first.path
    assert other.options()["params"]["blur_limit"] == [5, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.path.name, other.path.name])


def test_write_folder_refuses_an_existing_folder(tmp_path):
    with pytest.raises(FileExistsError, match="does not exist yet"):
        write_folder(tmp_path, "planted", "shadow", TINY)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"dataset": "cifar"}, "Expected `dataset` to be one of"),
    ({"failure": "fog"}, "Expected `failure` to be one of"),
    ({"sizes": {"train": 10, "val": 5, "test": 5}}, "Expected the keys of `sizes`"),
    ({"sizes": {**TINY, "test": 0}}, r"Expected `sizes\['test'\]` to be a positive integer"),
    ({"rates": {**DEFAULT_RATES, "probe": 1.5}}, r"Expected `rates\['probe'\]` to be a probability"),
])
def test_bad_options_are_refused(kwargs, match):
    options = {"dataset": "planted", "failure": "shadow", "sizes": TINY} | kwargs
    with pytest.raises(ValueError, match=match):
        folder_options(**options)
