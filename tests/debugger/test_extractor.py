import math

import pytest
import torch
from _dbtiny import DarknessNet
from torch import nn

from debugger.extractor import ConceptExtractor, ExtractorHead, augment_patches, train_head
from debugger.patches import sliding_windows
from debugger.structures import Concept


def _toy(n: int = 16, seed: int = 0):
    """Grey images; the first half carry a bright red square somewhere (the concept)."""
    g = torch.Generator().manual_seed(seed)
    images = 0.4 + 0.2 * torch.rand(n, 3, 16, 16, generator=g)
    masks = torch.zeros(n, 1, 16, 16, dtype=torch.bool)
    for i in range(n // 2):
        y, x = (int(v) for v in torch.randint(0, 12, (2,), generator=g))
        images[i, 0, y : y + 4, x : x + 4] = 1.0
        images[i, 1:, y : y + 4, x : x + 4] = 0.0
        masks[i, 0, y : y + 4, x : x + 4] = True
    ps = sliding_windows(images, sizes=(16,), concept_masks=masks, concept_names=("red",))
    return images, ps, masks


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    with torch.no_grad():  # channel 0 responds to red minus green: the concept is linearly visible
        net[0].weight[0].zero_()
        net[0].weight[0, 0, 1, 1] = 4.0
        net[0].weight[0, 1, 1, 1] = -4.0
        net[0].bias[0] = 0.0
    return net


def test_extractor_learns_a_separable_concept_from_few_labels():
    images, ps, _ = _toy()
    net = _net()
    ex = ConceptExtractor(net, "2", "red", n_augment=64, max_epochs=40, patience=5, seed=1)
    ex.fit(images, ps, positives=[0, 1, 2], negatives=[8, 9, 10])
    scores = ex.score(images, ps)
    truth = ps.concept_overlap[:, 0] > 0
    assert scores.shape == (len(ps),)
    assert float(scores[truth].min()) > float(scores[~truth].max())  # perfect ranking, unlabelled ones included
    assert ex.latent_shape_ == (8, 8, 8)
    h = ex.history_[-1]
    assert h["positives"] == 3 and h["negatives"] == 3 and 1 <= h["epochs"] <= 40
    assert h["best_val_loss"] < math.log(2)  # better than the untrained head (logit 0 everywhere)


def test_brushed_rectangle_positive_uses_only_its_part_of_the_patch():
    images, ps, masks = _toy()
    net = _net()
    ex = ConceptExtractor(net, "2", "red", n_augment=4, max_epochs=1)
    ys, xs = masks[0, 0].nonzero(as_tuple=True)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    crops = ex._crops(images, ps, [{"patch": 0, "label": 1, "box": box}])
    assert crops.shape == (1, 3, 16, 16)
    torch.testing.assert_close(crops[0, 0], torch.ones(16, 16))  # the whole crop is the red square
    ex.fit(images, ps, positives=[(0, box)], negatives=[9])
    assert ex.examples_[0] == {"patch": 0, "label": 1, "box": box}
    with pytest.raises(ValueError, match="overlap"):
        ConceptExtractor(net, "2", n_augment=4, max_epochs=1).fit(
            images, ps, positives=[(0, [20, 20, 30, 30])], negatives=[9])


def test_augment_policies_are_what_they_say():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    assert augment_patches(x, g, policies=(), p=1.0).equal(x)
    assert augment_patches(x, g, policies=("flip",), p=1.0).equal(x.flip(3))
    grey = augment_patches(x, g, policies=("grayscale",), p=1.0)
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(grey[:, c], lum)
    blurred = augment_patches(x, g, policies=("blur",), p=1.0)
    torch.testing.assert_close(blurred.mean((2, 3)), x.mean((2, 3)), atol=0.05, rtol=0)
    assert blurred.std((2, 3)).mean() < x.std((2, 3)).mean()
    # a constant crop stays constant under any warp: uncovered pixels take the fill, equal to the crop here
    flat = torch.full((4, 3, 8, 8), 0.5)
    torch.testing.assert_close(augment_patches(flat, g, policies=("shear", "rotate"), p=1.0), flat)
    rot = augment_patches(x, torch.Generator().manual_seed(1), policies=("rotate",), p=1.0, max_rotate=90.0)
    assert not rot.equal(x)
    with pytest.raises(ValueError, match="policy"):
        augment_patches(x, g, policies=("jitter",))
    with pytest.raises(ValueError, match="probability"):
        augment_patches(x, g, p=1.5)


def test_head_is_conv_then_global_max():
    head = ExtractorHead(2, kernel_size=1)
    with torch.no_grad():
        head.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        head.conv.bias.fill_(0.5)
    x = torch.zeros(1, 2, 3, 3)
    x[0, 0, 2, 1] = 3.0
    x[0, 1, 0, 0] = 1.0
    assert head(x).tolist() == [3.5]
    with pytest.raises(ValueError, match="odd"):
        ExtractorHead(2, kernel_size=2)


def test_train_head_stops_early_and_keeps_the_best_weights():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 2, 2, generator=g)
    y = (torch.rand(64, generator=g) > 0.5).float()  # labels unrelated to x: validation cannot improve for long
    xv = torch.randn(32, 4, 2, 2, generator=g)
    yv = (torch.rand(32, generator=g) > 0.5).float()
    head = ExtractorHead(4)
    hist = train_head(head, x, y, xv, yv, g, max_epochs=100, patience=2)
    assert len(hist) < 100
    best = min(h["val_loss"] for h in hist)
    with torch.no_grad():
        now = float(nn.functional.binary_cross_entropy_with_logits(head(xv), yv))
    assert now == pytest.approx(best, abs=1e-6)


def test_save_load_round_trip(tmp_path):
    images, ps, _ = _toy()
    net = _net()
    ex = ConceptExtractor(net, "2", "red", n_augment=16, max_epochs=3).fit(images, ps, [0, (1, [0, 0, 8, 8])], [9])
    path = ex.save(tmp_path)
    assert path == tmp_path / "red.pt" and not list(tmp_path.glob(".*tmp*"))
    back = ConceptExtractor.load(tmp_path, "red", net)
    torch.testing.assert_close(back.score(images, ps), ex.score(images, ps))
    assert back.examples_ == ex.examples_ and back.history_ == ex.history_
    assert back.layer == "2" and back.n_augment == 16 and back.latent_shape_ == ex.latent_shape_
    with pytest.raises(FileNotFoundError, match="red"):
        ConceptExtractor.load(tmp_path, "blue", net)


def test_to_concept_members_and_top():
    images, ps, _ = _toy()
    ex = ConceptExtractor(_net(), "2", "red", n_augment=32, max_epochs=20).fit(images, ps, [0, 1], [8, 9])
    c = ex.concept(images, ps)
    assert isinstance(c, Concept) and c.name == "red" and c.scores.shape == (len(ps),)
    assert c.members.tolist() == (c.scores >= 0.5).nonzero().flatten().tolist()
    assert c.meta["labelled_positives"] == 2 and c.meta["source"] == "extractor"
    assert set(c.top(4).tolist()) <= set(range(8))


def test_clear_errors():
    images, ps, _ = _toy()
    net = _net()
    with pytest.raises(ValueError, match="positive odd integer"):
        ConceptExtractor(net, "2", kernel_size=2)
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]"):
        ConceptExtractor(net, "2", policy_p=1.5)
    ex = ConceptExtractor(net, "2", n_augment=4, max_epochs=1)
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        ex.fit(images, ps, [], [1])
    with pytest.raises(ValueError, match=r"patch indices in \[0, 16\)"):
        ex.fit(images, ps, [99], [1])
    with pytest.raises(RuntimeError, match="fit"):
        ex.score_latents(torch.zeros(2, 8, 8, 8))
    with pytest.raises(ValueError, match="Nearest valid names"):  # an unknown layer fails when first used
        ConceptExtractor(net, "3", n_augment=4, max_epochs=1).fit(images, ps, [0], [9])
    with pytest.raises(ValueError, match=r"latent tensors of shape \(N, C, h, w\)"):
        ex.fit_latents(torch.zeros(4, 8), torch.tensor([0, 1, 0, 1]))
    ex.fit(images, ps, [0], [9])
    with pytest.raises(ValueError, match="8 channels"):
        ex.score_latents(torch.zeros(2, 5, 8, 8))
    with pytest.raises(ValueError, match="labels in"):
        ex.fit_latents(torch.zeros(4, 8, 2, 2), torch.tensor([0, 1, 2, 1]))
    flat = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())
    with pytest.raises(ValueError, match="spatial"):
        ConceptExtractor(flat, "1", n_augment=4, max_epochs=1).fit(images, ps, [0], [9])
    with pytest.raises(ValueError, match="policy"):
        ConceptExtractor(net, "2", policies=("jitter",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_augment"):
        ConceptExtractor(net, "2", n_augment=0)


def test_fit_latents_holds_out_a_stratified_validation_split():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, 2, 2, generator=g)
    y = (torch.rand(100, generator=g) < 0.3).long()
    x[y == 1, 0, 1, 0] += 5.0  # the concept: a strong channel-0 response somewhere
    ex = ConceptExtractor(nn.Identity(), "", "upper", max_epochs=60, patience=5).fit_latents(x, y)
    h = ex.history_[-1]
    n_pos = int(y.sum())
    assert h["positives"] == n_pos - int(0.2 * n_pos)  # 20% of each class held out
    assert h["negatives"] == 100 - n_pos - int(0.2 * (100 - n_pos))
    acc = ((ex.score_latents(x) > 0.5).long() == y).float().mean()
    assert acc > 0.95


def test_model_untouched():
    images, ps, _ = _toy()
    net = _net()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ConceptExtractor(net, "2", n_augment=8, max_epochs=2).fit(images, ps, [0], [9])
    assert net.training
    for k, v in net.state_dict().items():
        assert v.equal(before[k])
    assert all(p.grad is None for p in net.parameters())


def test_extractor_concept_plugs_into_confusion_and_failure_ranking():
    from debugger.confusion import concept_confusion, concept_membership
    from debugger.pipeline import ConceptAnalysis

    g = torch.Generator().manual_seed(0)
    n = 24
    images = 0.7 + 0.3 * torch.rand(n, 3, 16, 16, generator=g)
    masks = torch.zeros(n, 1, 16, 16, dtype=torch.bool)
    for i in range(0, n, 2):  # a dark 8x8 shadow in a random quadrant of every other image
        q = int(torch.randint(0, 4, (1,), generator=g))
        y, x = 8 * (q // 2), 8 * (q % 2)
        images[i, :, y : y + 8, x : x + 8] = 0.1 * torch.rand(3, 8, 8, generator=g)
        masks[i, 0, y : y + 8, x : x + 8] = True
    target = torch.zeros(n, dtype=torch.long)
    batches = [{"image": images, "target": target, "concept_masks": masks}]
    net = DarknessNet()  # wrong on every shadowed image of class 0
    windows = {"sizes": (8,), "strides": (8,)}
    ps = sliding_windows(images, **windows, concept_masks=masks, concept_names=("shadow",))
    truth = ps.concept_overlap[:, 0] > 0
    pos, neg = truth.nonzero().flatten()[:3].tolist(), (~truth).nonzero().flatten()[:3].tolist()
    ex = ConceptExtractor(net, "relu", "shadow", n_augment=64, max_epochs=30, patience=5).fit(images, ps, pos, neg)

    def bright(emb, patches):
        return [Concept(0, "bright", torch.arange(len(patches)), emb[:, 1])]

    analysis = ConceptAnalysis(net, "relu", patches="window", discovery=bright, top_k=12, patch_kwargs=windows,
                               extra_concepts=[ex.concept], min_support=3)
    report = analysis.run(batches)
    assert report.concept_names == ["bright", "shadow"]
    assert [c.id for c in report.concepts] == [0, 1]
    shadow = report.concepts[1]
    torch.testing.assert_close(shadow.scores, ex.score(images, ps))  # the same patches, scored by the extractor
    membership = concept_membership(shadow.scores[None], ps.image_index, n, 12)
    assert membership[0].equal(report.membership[1])
    cap_pred = net(images).argmax(1)
    torch.testing.assert_close(report.confusion[1], concept_confusion(cap_pred, target, membership, 2)[0])
    top = report.ranking[0]
    assert top.name == "shadow" and top.is_failure and top.error_in == 1.0
    assert report.config["extra_concepts"] == ["ConceptExtractor.concept"]
    with pytest.raises(ValueError, match="extra_concepts"):
        ConceptAnalysis(net, "relu", extra_concepts=["shadow"])  # type: ignore[list-item]
