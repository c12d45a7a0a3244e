import math

import pytest
import torch
import torchmetrics

from recipes.baseline import fit_baseline, predict, slice_metrics
from recipes.data import PlantedConceptsDataModule, RoadScenesDataModule
from recipes.models import ResNetClassifier, SegmentationNet


def test_classifier_trains_for_a_few_steps_and_loss_falls():
    dm = PlantedConceptsDataModule(train_size=128, val_size=32, test_size=64, batch_size=32, cache_dir=None)
    model = ResNetClassifier(width=4)
    x = dm.dataset("train").materialize()
    before = torch.nn.functional.cross_entropy(model.eval()(x["image"]), x["target"]).item()
    fit_baseline(dm, model, max_epochs=2, seed=0)
    after = torch.nn.functional.cross_entropy(model(x["image"]), x["target"]).item()
    assert after < before
    m = slice_metrics(model, dm.dataset("test"))
    shadow = m["shadow"]
    assert m["n"] == 64 and shadow["n_with"] + shadow["n_without"] == 64 and shadow["n_with"] > 0
    # the accuracy over all images is the two slices' accuracies weighted by their sizes
    pooled = (shadow["with"] * shadow["n_with"] + shadow["without"] * shadow["n_without"]) / 64
    assert m["all"] == pytest.approx(pooled, abs=1e-6)


def test_segmentation_net_trains_and_reports_iou_per_class():
    dm = RoadScenesDataModule(train_size=8, val_size=4, test_size=4, batch_size=4, cache_dir=None)
    model = fit_baseline(dm, SegmentationNet(width=4), max_epochs=1, seed=0)
    m = slice_metrics(model, dm.dataset("test"))
    out = predict(model, dm.dataset("test"))
    reference = torchmetrics.functional.jaccard_index(out["pred"], out["target"], task="multiclass", num_classes=3,
                                                      average="none", zero_division=float("nan"))
    torch.testing.assert_close(torch.tensor(m["all"]["iou"]), reference, equal_nan=True)
    assert m["all"]["pixel_acc"] == pytest.approx((out["pred"] == out["target"]).float().mean().item())


class _Lookup(torch.utils.data.Dataset):
    """Contract samples whose image's first channel holds the class (per image or per pixel) a model will predict."""

    concept_names = ("shadow", "occluder")

    def __init__(self, predicted, target, concepts, num_classes):
        self.predicted, self.target, self.concepts, self.num_classes = predicted, target, concepts, num_classes

    def __len__(self):
        return len(self.target)

    def __getitem__(self, i):
        shape = self.target[i].shape or (1, 1)
        image = torch.zeros(1, *shape) + self.predicted[i].float()
        return {"image": image, "target": self.target[i], "concepts": self.concepts[i]}


class _Echo(torch.nn.Module):
    """Predicts what the image's first channel says: a one-hot logit per image, or per pixel."""

    def __init__(self, num_classes, per_pixel):
        super().__init__()
        self.num_classes, self.per_pixel = num_classes, per_pixel
        self.unused = torch.nn.Linear(1, 1)  # predict() looks up the device of the first parameter

    def forward(self, x):
        if self.per_pixel:
            return torch.nn.functional.one_hot(x[:, 0].long(), self.num_classes).permute(0, 3, 1, 2).float()
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), self.num_classes).float()


def test_slice_metrics_classification_accuracy_per_concept_slice_by_hand():
    concepts = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    data = _Lookup(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), concepts, num_classes=3)
    m = slice_metrics(_Echo(3, per_pixel=False), data, batch_size=3)
    assert m["n"] == 4 and m["all"] == 0.75 and m["clean"] == 1.0  # only sample 2 is wrong
    assert m["shadow"] == {"with": 0.5, "without": 1.0, "n_with": 2, "n_without": 2}
    assert m["occluder"] == {"with": 0.0, "without": 1.0, "n_with": 1, "n_without": 3}


def test_slice_metrics_segmentation_pixel_accuracy_and_iou_by_hand():
    target = torch.tensor([[[0, 1], [2, 2]]])
    predicted = torch.tensor([[[0, 1], [1, 2]]])
    data = _Lookup(predicted, target, torch.tensor([[0.0, 0.0]]), num_classes=4)
    m = slice_metrics(_Echo(4, per_pixel=True), data)
    assert m["all"]["pixel_acc"] == 0.75
    # class 1: predicted at 2 pixels, true at 1, overlapping at 1; class 3 is nowhere, so its IoU is undefined
    assert m["all"]["iou"][:3] == [1.0, 0.5, 0.5] and math.isnan(m["all"]["iou"][3])
    assert m["shadow"]["n_with"] == 0 and math.isnan(m["shadow"]["with"]["pixel_acc"])


def test_models_take_plain_pairs_as_well_as_contract_dicts():
    model = ResNetClassifier(width=4, in_channels=1)
    x, y = torch.rand(6, 1, 16, 16), torch.randint(10, (6,))
    out = predict(model, [(x, y)])
    assert out["pred"].shape == (6,) and "concepts" not in out
    assert model.training  # predict restores the mode it found
    loss_pair = model._step((x, y), "train")
    loss_dict = model._step({"image": x, "target": y}, "train")
    assert torch.allclose(loss_pair, loss_dict)


def test_readable_layer_names():
    names = dict(ResNetClassifier(blocks=(1, 2)).named_children())
    assert {"stem", "layer1", "layer2", "pool", "fc"} <= set(names)
    seg = dict(SegmentationNet().named_children())
    assert {"enc1", "enc2", "bottleneck", "dec2", "dec1", "head"} <= set(seg)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"width": 0}, "width"),
        ({"blocks": ()}, "blocks"),
        ({"stem_stride": 3}, "stem_stride"),
        ({"lr": 0.0}, "lr"),
    ],
)
def test_classifier_rejects_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetClassifier(**kwargs)


def test_segmentation_rejects_sizes_the_unet_cannot_pool():
    with pytest.raises(ValueError, match="divisible by 4"):
        SegmentationNet(width=4)(torch.zeros(1, 3, 30, 30))


def test_fit_baseline_rejects_bad_epochs():
    dm = PlantedConceptsDataModule(train_size=8, val_size=8, test_size=8, cache_dir=None)
    with pytest.raises(ValueError, match="max_epochs"):
        fit_baseline(dm, max_epochs=0)


def test_fit_baseline_builds_a_model_factory_after_seeding():
    dm = PlantedConceptsDataModule(train_size=32, val_size=8, test_size=8, batch_size=16, cache_dir=None)

    def factory():
        return ResNetClassifier(width=4)

    torch.manual_seed(123)
    a = fit_baseline(dm, factory, max_epochs=1, seed=5)
    torch.manual_seed(456)  # whatever ran before must not matter
    b = fit_baseline(dm, factory, max_epochs=1, seed=5)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_quiet_lightning_hides_the_leafspec_deprecation_lightning_triggers():
    import warnings

    from pytorch_lightning.utilities import _pytree

    from recipes.baseline import quiet_lightning

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _pytree._tree_flatten(1)
    if not any("LeafSpec" in str(w.message) for w in seen):
        pytest.skip("this torch/Lightning pair does not warn about LeafSpec")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_lightning()
        _pytree._tree_flatten(1)
    assert not [w for w in seen if "LeafSpec" in str(w.message)]
