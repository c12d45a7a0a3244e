"""TCAV: CAVs vs scikit-learn, scores vs captum, exact tiny cases, significance vs scipy, cache, safety, errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from debugger.tcav import (
    CAV,
    TCAV,
    CAVCache,
    ExampleSet,
    concept_windows,
    directional_derivatives,
    example_activations,
    layer_cavs,
    layer_sensitivities,
    model_fingerprint,
    sample_pixels,
    tcav,
    tcav_concept_significance,
    tcav_scores,
    tcav_significance,
)


def _net(seed: int = 0, classes: int = 3, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6) if bn else nn.Identity(),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, classes),
    ).eval()


def _images(n: int, seed: int, shift: float = 0.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    x[:, 0, :4, :4] += shift  # the "concept": a bright top-left corner in the first channel
    return x


# ----------------------------------------------------------------------------------------------------------------
# CAVs
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "logistic"])
def test_cav_is_sklearn_normalised_coef_on_the_same_split(name: str) -> None:
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.model_selection import train_test_split

    g = torch.Generator().manual_seed(3)
    concept = torch.randn(30, 4, generator=g) + torch.tensor([1.5, 0.0, -1.0, 0.0])
    random = torch.randn(40, 4, generator=g)
    cav = CAV(name, regularization=0.05, test_fraction=0.25, random_state=7).fit(concept, random)

    x = torch.cat([concept, random]).double().numpy()
    y = [1] * 30 + [0] * 40
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=18, stratify=y, random_state=7)
    ref = (SGDClassifier(alpha=0.05, max_iter=1000, tol=1e-3, random_state=7) if name == "sgd"
           else LogisticRegression(C=1 / 0.05, max_iter=1000)).fit(x_tr, y_tr)
    w = torch.tensor(ref.coef_[0])
    assert torch.allclose(cav.direction_.double(), w / w.norm(), atol=1e-6)
    assert cav.accuracy_ == pytest.approx(float((ref.predict(x_te) == y_te).mean()))
    assert cav.intercept_ == pytest.approx(float(ref.intercept_[0] / w.norm()))
    assert float(cav.direction_.norm()) == pytest.approx(1.0, abs=1e-6)
    assert cav.direction_[0] > 0 and cav.direction_[2] < 0  # points towards the concept


def test_cav_accepts_an_sklearn_estimator_and_leaves_it_unfitted() -> None:
    from sklearn.svm import LinearSVC

    est = LinearSVC(C=0.5)
    cav = CAV(est).fit(torch.randn(10, 3) + 3.0, torch.randn(10, 3))
    assert not hasattr(est, "coef_") and hasattr(cav.classifier_, "coef_")
    assert cav.direction_.shape == (3,)


@pytest.mark.parametrize(
    ("kwargs", "concept", "random", "match"),
    [
        ({}, torch.zeros(1, 3), torch.zeros(4, 3), "Expected `concept` activations of shape"),
        ({}, torch.zeros(4, 3), torch.zeros(4, 2), "one feature size"),
        ({}, torch.zeros(4, 3, 2), torch.zeros(4, 3), "Expected `concept` activations"),
        ({"regularization": 0.0}, torch.zeros(4, 3), torch.zeros(4, 3), "Expected `regularization` to be positive"),
        ({"test_fraction": 0.95}, torch.zeros(4, 3), torch.zeros(4, 3), "Expected `test_fraction`"),
        ({"classifier": "svm"}, torch.randn(4, 3), torch.randn(4, 3), "Expected `classifier` to be one of"),
    ],
)
def test_cav_rejects_bad_input(kwargs: dict[str, Any], concept: Tensor, random: Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CAV(**kwargs).fit(concept, random)


def test_layer_cavs_random_sets_do_not_depend_on_the_other_concepts() -> None:
    g = torch.Generator().manual_seed(0)
    big, small = torch.randn(30, 4, generator=g) + 2.0, torch.randn(5, 4, generator=g) - 2.0
    pool = torch.randn(60, 4, generator=g)
    cavs = layer_cavs({"big": big, "small": small}, pool, runs=3, max_examples=12, null_concepts=2)
    assert cavs.concept_directions.shape == (2, 3, 4) and cavs.null_directions.shape == (2, 2, 3, 4)
    assert torch.allclose(cavs.concept_directions.norm(dim=-1), torch.ones(2, 3))
    assert bool((cavs.concept_accuracy > 0.9).all())  # shifted sets separate from the pool
    assert not torch.equal(cavs.null_directions[0], cavs.null_directions[1])  # sizes 12 and 5: other null sets
    alone = layer_cavs({"big": big}, pool, runs=3, max_examples=12, null_concepts=2)  # same largest set size
    assert torch.equal(alone.random_directions, cavs.random_directions)
    assert torch.equal(alone.concept_directions[0], cavs.concept_directions[0])
    with pytest.raises(ValueError, match="Expected `runs` to be a positive integer"):
        layer_cavs({"c": big}, pool, runs=0)
    with pytest.raises(ValueError, match="Expected `null_concepts` to be a non-negative integer"):
        layer_cavs({"c": big}, pool, null_concepts=-1)


# ----------------------------------------------------------------------------------------------------------------
# Exact tiny cases
# ----------------------------------------------------------------------------------------------------------------


def test_directional_derivatives_flat_and_per_channel() -> None:
    g = torch.arange(12.0).view(1, 3, 2, 2)
    flat = torch.zeros(1, 12)
    flat[0, 5] = 2.0
    assert directional_derivatives(g, flat).tolist() == [[10.0]]
    per_channel = torch.tensor([[1.0, 0.0, -1.0]])
    assert directional_derivatives(g, per_channel).tolist() == [[(0 + 1 + 2 + 3) - (8 + 9 + 10 + 11)]]
    with pytest.raises(ValueError, match="Expected CAVs of 12 \\(flat\\) or 3 \\(per channel\\)"):
        directional_derivatives(g, torch.zeros(1, 5))


def test_hand_set_linear_model_gives_the_weight_row_dotted_with_the_cav() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [1.0, 1.0]]))
    cavs = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    x = torch.randn(4, 1, 1, 2)
    d = layer_sensitivities(net, "1", x, cavs, targets=torch.tensor([0, 1, 2, 0]))
    expected = torch.tensor([[1.0, 0.6], [0.0, -0.8], [1.0, 1.4], [1.0, 0.6]])
    assert torch.allclose(d, expected)
    s, n = tcav_scores(d, torch.tensor([0, 1, 2, 0]), [0, 1, 2])
    assert s.tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]] and n.tolist() == [2, 1, 1]


def test_per_pixel_derivatives_of_a_one_by_one_head_are_exact() -> None:
    # logits[b, c, y, x] = sum_d W[c, d] * act[b, d, y, x]: the pixel's gradient is W[c] at that pixel only.
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 3, 1, bias=False))
    w = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, -3.0]])
    with torch.no_grad():
        net[2].weight.copy_(w.view(3, 2, 1, 1))
    x = torch.randn(2, 3, 5, 6)
    pixels = torch.tensor([[[0, 0], [4, 5], [2, 3]], [[1, 1], [3, 2], [0, 5]]])
    targets = torch.tensor([[0, 1, 2], [2, -1, 1]])
    cav = torch.tensor([[0.5, -1.0]])
    d = layer_sensitivities(net, "1", x, cav, targets, pixels=pixels, batch_size=1)
    expected = torch.tensor([[w[0] @ cav[0], w[1] @ cav[0], w[2] @ cav[0]], [w[2] @ cav[0], 0.0, w[1] @ cav[0]]])
    assert torch.allclose(d[..., 0], expected)


class _DataDependentIdentity(torch.autograd.Function):
    """Identity whose backward branches on a gradient's value: fine per slot, not vmappable."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad if bool(grad.abs().sum() >= 0) else -grad


class _NotVmappable(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _DataDependentIdentity.apply(x)


def _seg_net(vmappable: bool = True) -> nn.Module:
    torch.manual_seed(6)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1), nn.ReLU() if vmappable else _NotVmappable(),
        nn.Upsample(scale_factor=2.0), nn.Conv2d(5, 3, 3, padding=1),
    )
    with torch.no_grad():  # non-trivial running statistics, used in eval mode
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def _pixel_reference(net: nn.Module, layer: str, x: Tensor, cavs: Tensor, targets: Tensor, pixels: Tensor) -> Tensor:
    # One image and one pixel at a time, through the layer's captured output: no batching of any kind.
    from debugger.capture import LayerCapture

    out = torch.zeros(*targets.shape, cavs.shape[0])
    for b in range(x.shape[0]):
        for p in range(targets.shape[1]):
            if targets[b, p] < 0:
                continue
            with LayerCapture(net, [layer]) as cap:
                logits = net(x[b : b + 1])
            (g,) = torch.autograd.grad(logits[0, targets[b, p], pixels[b, p, 0], pixels[b, p, 1]], cap.outputs[layer])
            out[b, p] = directional_derivatives(g, cavs)[0]
    return out


@pytest.mark.parametrize("slots_per_pass", [1, 2, 3, 16])
@pytest.mark.parametrize("flat", [False, True])
def test_batched_pixel_slots_equal_one_backward_per_slot_and_per_image(slots_per_pass: int, flat: bool) -> None:
    net = _seg_net()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 8, 8, generator=g)
    labels = torch.randint(0, 3, (5, 8, 8), generator=g)
    labels[2] = 0  # image 2 has only class 0: its slots of classes 1 and 2 are unused
    pix, cls = sample_pixels(labels, 2, [0, 1, 2], g)
    cls[:, 3] = -1  # a slot unused in every image is skipped
    assert bool((cls[2, 2:] == -1).all())
    cavs = torch.randn(3, 5 * 4 * 4 if flat else 5, generator=g)
    expected = _pixel_reference(net, "5", x, cavs, cls, pix)
    d = layer_sensitivities(net, "5", x, cavs, cls, pixels=pix, batch_size=2, slots_per_pass=slots_per_pass)
    assert d.shape == (5, 6, 3)
    assert torch.allclose(d, expected, atol=1e-5)
    assert bool((d[cls < 0] == 0).all()) and bool((expected[cls >= 0] != 0).all())
    loop = layer_sensitivities(net, "5", x, cavs, cls, pixels=pix, batch_size=2)
    assert torch.allclose(d, loop, atol=1e-5)


def test_unvmappable_backward_warns_and_falls_back_to_one_pass_per_slot() -> None:
    net = _seg_net(vmappable=False)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 8, 8, generator=g)
    pix, cls = sample_pixels(torch.randint(0, 3, (4, 8, 8), generator=g), 2, [0, 1, 2], g)
    cavs = torch.randn(2, 5, generator=g)
    with pytest.warns(UserWarning, match="falling back to one backward pass per slot") as record:
        d = layer_sensitivities(net, "4", x, cavs, cls, pixels=pix, batch_size=2, slots_per_pass=4)
    assert len([w for w in record if "falling back" in str(w.message)]) == 1  # once per call, not per chunk
    expected = _pixel_reference(net, "4", x, cavs, cls, pix)
    assert torch.allclose(d, expected, atol=1e-5)
    assert torch.allclose(d, layer_sensitivities(net, "4", x, cavs, cls, pixels=pix, batch_size=2), atol=1e-5)


def test_sample_pixels_draws_only_pixels_of_the_class_and_marks_missing_slots() -> None:
    labels = torch.zeros(3, 6, 7, dtype=torch.long)
    labels[:, :2] = 1
    labels[1, 5, 6] = 2
    pix, cls = sample_pixels(labels, 4, [0, 1, 2], torch.Generator().manual_seed(0))
    assert pix.shape == (3, 12, 2) and cls.shape == (3, 12)
    got = labels[torch.arange(3)[:, None], pix[..., 0], pix[..., 1]]
    assert torch.equal(got[cls >= 0], cls[cls >= 0])
    assert (cls[:, 8:] >= 0).sum(1).tolist() == [0, 1, 0]  # class 2 only in image 1, one pixel
    assert torch.equal(pix[1, 8], torch.tensor([5, 6]))
    for i in range(3):  # distinct pixels within a class
        assert len({tuple(p) for p in pix[i, :4].tolist()}) == 4
    with pytest.raises(ValueError, match="Expected integer `labels`"):
        sample_pixels(labels.float(), 4, [0])


# ----------------------------------------------------------------------------------------------------------------
# captum
# ----------------------------------------------------------------------------------------------------------------


class _FixedCAVs:
    """A captum ``Classifier`` whose weights are our CAVs, chosen by the pair of concept ids it is trained on."""

    def __init__(self, by_ids: dict[tuple[int, int], Tensor]) -> None:
        self.by_ids = by_ids
        self._w: Tensor | None = None
        self._classes: list[int] = []

    def train_and_eval(self, dataloader: Any, **kwargs: Any) -> dict[str, Any]:
        labels = torch.cat([y for _, y in dataloader])
        concept_id, random_id = int(labels[0]), int(labels[-1])
        cav = self.by_ids[(concept_id, random_id)]
        self._w = torch.stack([cav, -cav])
        self._classes = [concept_id, random_id]
        return {"accs": torch.tensor(1.0)}

    def weights(self) -> Tensor:
        assert self._w is not None
        return self._w

    def classes(self) -> list[int]:
        return self._classes


def _captum_tcav(net: nn.Module, layer: str, inputs: Tensor, target: int, concept: Tensor, randoms: list[Tensor],
                 cavs: list[Tensor], tmp_path: Any) -> tuple[Tensor, Tensor]:
    captum_concept = pytest.importorskip("captum.concept")
    from torch.utils.data import DataLoader

    def loader(x: Tensor) -> DataLoader:
        return DataLoader(list(x), batch_size=8)

    c = captum_concept.Concept(0, "concept", loader(concept))
    rs = [captum_concept.Concept(i + 1, f"random{i}", loader(r)) for i, r in enumerate(randoms)]
    clf = _FixedCAVs({(0, i + 1): cavs[i] for i in range(len(rs))})
    tcav = captum_concept.TCAV(net, [layer], classifier=clf, save_path=str(tmp_path / "cav"), model_id="m")
    out = tcav.interpret(inputs, [[c, r] for r in rs], target=target)
    sign = torch.stack([out[f"0-{r.id}"][layer]["sign_count"][0] for r in rs])
    magnitude = torch.stack([out[f"0-{r.id}"][layer]["magnitude"][0] for r in rs])
    return sign, magnitude


@pytest.mark.parametrize("space", ["flat", "pooled"])
def test_scores_equal_captum_tcav_given_the_same_cavs(space: str, tmp_path: Any) -> None:
    net = _net(seed=1)
    layer = "3"
    concept, randoms = _images(16, 10, shift=3.0), [_images(16, 20 + i) for i in range(3)]
    inputs = _images(24, 99, shift=1.0)
    ca = example_activations(net, layer, concept, space=space)  # type: ignore[arg-type]
    cavs = [CAV(random_state=i).fit(ca, example_activations(net, layer, r, space=space)).direction_  # type: ignore[arg-type]
            for i, r in enumerate(randoms)]
    ours_d = layer_sensitivities(net, layer, inputs, torch.stack(cavs), targets=0)
    ours = (ours_d > 0).float().mean(0)
    # captum dots flat gradients with flat CAVs: a per-channel CAV is the same direction repeated over space.
    flat = cavs if space == "flat" else [c.repeat_interleave(64) for c in cavs]
    sign, magnitude = _captum_tcav(net, layer, inputs, 0, concept, randoms, flat, tmp_path)
    assert torch.allclose(ours, sign, atol=1e-6)
    assert torch.allclose(ours_d.mean(0), magnitude, atol=1e-6)
    assert ours.shape == (3,) and 0.0 < float(ours.mean()) < 1.0  # a non-trivial case: not all one sign


def test_tcav_runs_equal_captum_per_random_set(tmp_path: Any) -> None:
    net = _net(seed=2)
    concept = _images(12, 1, shift=3.0)
    pool = _images(48, 2)
    inputs, targets = _images(10, 3), torch.full((10,), 1)
    tcav = TCAV(net, "3", runs=3, space="flat", max_examples=12)
    res = tcav.interpret(inputs, targets, {"corner": ExampleSet(concept)}, ExampleSet(pool), classes=[1])
    trained = tcav.cavs("3", {"corner": ExampleSet(concept)}, ExampleSet(pool))
    cdirs = trained.concept_directions
    assert cdirs.shape == (1, 3, 5 * 8 * 8) and trained.concept_accuracy.shape == (1, 3)
    assert trained.random_directions.shape == (3, 5 * 8 * 8) and trained.random_accuracy.shape == (3,)
    assert trained.null_directions.shape == (1, 0, 3, 5 * 8 * 8)  # no null concepts for test="runs"
    # rebuild the random subsets TCAV drew, to hand captum the same concept examples
    g = torch.Generator().manual_seed(0)
    subsets = [pool[torch.randperm(48, generator=g)[:12]] for _ in range(4)]
    sign, _ = _captum_tcav(net, "3", inputs, 1, concept, subsets[1:], list(cdirs[0]), tmp_path)
    assert torch.allclose(res.scores[0, 0, 0].float(), sign, atol=1e-6)
    # and the CAVs are the ones a CAV fitted on those subsets gives
    again = CAV(random_state=1).fit(example_activations(net, "3", concept, space="flat"),
                                    example_activations(net, "3", subsets[2], space="flat"))
    assert torch.allclose(again.direction_, cdirs[0, 1], atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Significance
# ----------------------------------------------------------------------------------------------------------------


def test_significance_is_scipy_ttest_ind_two_sided() -> None:
    from scipy.stats import ttest_ind

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 10, generator=g), torch.rand(2, 3, 10, generator=g) * 0.5
    p = tcav_significance(a, b)
    for i in range(2):
        for j in range(3):
            ref = ttest_ind(a[i, j].double().numpy(), b[i, j].double().numpy()).pvalue
            assert float(p[i, j]) == pytest.approx(ref, rel=1e-9)
    assert float(tcav_significance(torch.ones(5), torch.ones(5))) == 1.0  # no difference at all; scipy says NaN
    assert float(tcav_significance(torch.ones(5), torch.zeros(5))) == 0.0
    assert torch.isnan(tcav_significance(torch.ones(1), torch.ones(1)))


def test_a_concept_the_class_uses_is_significant_and_a_random_one_is_not() -> None:
    # Logit 0 = mean of channel 0 at the layer; the concept examples have a high channel 0.
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(4, 3).view(4, 3, 1, 1))
        net[0].bias.zero_()
        net[3].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
    g = torch.Generator().manual_seed(0)
    concept = torch.randn(30, 3, 4, 4, generator=g)
    concept[:, 0] += 3.0
    pool = torch.randn(200, 3, 4, 4, generator=g)
    lookalike = torch.randn(30, 3, 4, 4, generator=g)  # drawn like the pool: a "random concept"
    inputs, targets = torch.randn(20, 3, 4, 4, generator=g), torch.tensor([0, 1] * 10)
    tcav = TCAV(net, "0", runs=10, correction="bonferroni", significance=0.01)
    res = tcav.interpret(inputs, targets, {"c0": ExampleSet(concept), "noise": ExampleSet(lookalike)},
                         ExampleSet(pool))
    assert res.scores.shape == (1, 2, 2, 10) and res.random_scores.shape == (1, 2, 10)
    assert torch.all(res.scores[0, 0, 0] == 1.0) and torch.all(res.scores[0, 0, 1] == 0.0)
    assert bool(res.significant[0, 0].all())
    assert float(res.p_values[0, 1].min()) > 0.01 and not bool(res.significant[0, 1].any())
    assert torch.allclose(res.p_adjusted, (res.p_values * 4).clamp(max=1.0), equal_nan=True)
    rows = res.rows()
    assert len(rows) == 4 and rows[0]["concept"] == "c0" and rows[0]["score"] == 1.0
    assert res.to_dict()["rows"] == rows
    assert res.significance == 0.01 and res.to_dict()["significance"] == 0.01
    assert torch.equal(res.significant, res.p_adjusted < 0.01)


def test_concept_test_is_a_t_test_of_one_new_draw_against_the_null_concepts() -> None:
    from scipy.stats import t as student_t

    g = torch.Generator().manual_seed(1)
    concept = torch.rand(2, 6, generator=g)
    null = torch.rand(2, 5, 6, generator=g)
    p = tcav_concept_significance(concept, null)
    for i in range(2):
        c, means = concept[i].double().mean(), null[i].double().mean(-1)
        stat = (c - means.mean()) / (means.std() * (1 + 1 / 5) ** 0.5)
        assert float(p[i]) == pytest.approx(2 * student_t.sf(abs(float(stat)), 4), rel=1e-9)
    flat = torch.full((3, 4), 0.5)
    assert float(tcav_concept_significance(torch.full((4,), 0.5), flat)) == 1.0
    assert float(tcav_concept_significance(torch.full((4,), 0.9), flat)) == 0.0
    with pytest.raises(ValueError, match=r"Expected null scores of shape \(\.\.\., M >= 2, R\)"):
        tcav_concept_significance(concept[0], null[0, :1])


def test_concepts_test_flags_the_concept_and_spares_a_random_lookalike() -> None:
    net = _net(seed=1)
    concept, pool = ExampleSet(_images(30, 1, shift=3.0)), _images(200, 2)
    lookalike = ExampleSet(pool, index=torch.arange(100, 130))  # literally random members of the pool
    inputs, targets = _images(40, 3), torch.arange(40) % 3
    tcav = TCAV(net, "3", runs=10, test="concepts", null_concepts=10)
    res = tcav.interpret(inputs, targets, {"corner": concept, "lookalike": lookalike}, ExampleSet(pool))
    assert res.test == "concepts" and res.null_scores is not None and res.null_scores.shape == (1, 2, 3, 10)
    assert bool((res.p_values[0, 0] < 0.05).all()) and bool((res.p_values[0, 1] > 0.1).all())
    assert res.p_runs is not None and torch.equal(res.p_runs, tcav_significance(res.scores, res.random_scores[:, None]))
    null = tcav.cavs("3", {"corner": concept, "lookalike": lookalike}, ExampleSet(pool)).null_directions
    assert null.shape == (2, 10, 10, 5) and torch.equal(null[0], null[1])  # one size: the same null sets
    assert res.rows()[0]["null_score"] == pytest.approx(float(res.null_scores[0, 0, 0].mean()))


def test_per_pixel_tcav_on_a_segmentation_net() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 16, 16, generator=g)
    masks = torch.zeros(6, 1, 16, 16, dtype=torch.bool)
    masks[:, 0, :8, :8] = True
    images[:, :, :8, :8] += 2.0
    concepts, random = concept_windows(images, masks, ["bright"], sizes=(4,))
    labels = (images[:, 0] > 0).long()
    pix, cls = sample_pixels(labels, 3, [0, 1], torch.Generator().manual_seed(1))
    res = TCAV(net, "1", runs=4).interpret(images, cls, concepts, random, pixels=pix)
    assert res.classes == [0, 1] and res.scores.shape == (1, 1, 2, 4)
    assert res.counts.tolist() == [int((cls == 0).sum()), int((cls == 1).sum())]
    cdirs = TCAV(net, "1", runs=4).cavs("1", concepts, random).concept_directions
    d = layer_sensitivities(net, "1", images, cdirs[0], cls, pixels=pix)
    expected, _ = tcav_scores(d, cls, [0, 1])
    assert torch.allclose(res.scores[0, 0], expected)


# ----------------------------------------------------------------------------------------------------------------
# Cache and safety
# ----------------------------------------------------------------------------------------------------------------


def test_cache_serves_cavs_until_the_weights_change() -> None:
    net = _net(seed=3, bn=True)
    cache = CAVCache()
    tcav = TCAV(net, ["3"], runs=2, cache=cache)
    concepts, random = {"c": ExampleSet(_images(10, 1, 3.0))}, ExampleSet(_images(30, 2))
    first = tcav.cavs("3", concepts, random)
    again = tcav.cavs("3", concepts, random)
    assert cache.hits == 1 and cache.misses == 1 and again is first
    with torch.no_grad():
        net[0].weight.mul_(-1.0)
    changed = tcav.cavs("3", concepts, random)
    assert cache.misses == 2 and not torch.allclose(changed.concept_directions, first.concept_directions)
    fp = model_fingerprint(net)
    net[1].running_mean.add_(0.5)  # buffers change the activations too
    assert model_fingerprint(net) != fp
    tcav.cavs("3", concepts, random)
    assert cache.misses == 3
    tcav.cavs("3", {"c": ExampleSet(_images(10, 5, 3.0))}, random)  # other examples, same name
    assert cache.misses == 4 and len(cache) == 4


def test_the_class_is_the_function_with_its_settings() -> None:
    net = _net(seed=6)
    concepts, random = {"c": ExampleSet(_images(10, 1, 3.0))}, ExampleSet(_images(30, 2))
    inputs, targets = _images(9, 3), torch.tensor([0, 1, 2] * 3)
    settings: dict[str, Any] = {"runs": 3, "regularization": 0.05, "max_examples": 8, "test": "concepts",
                                "null_concepts": 2, "random_state": 4, "classifier": "logistic"}
    res = TCAV(net, ["0", "3"], **settings).interpret(inputs, targets, concepts, random)
    direct = tcav(net, ["0", "3"], inputs, targets, concepts, random, **settings)
    assert torch.equal(res.scores, direct.scores) and torch.equal(res.p_values, direct.p_values)
    assert res.null_scores is not None and direct.null_scores is not None
    assert torch.equal(res.null_scores, direct.null_scores)
    assert not torch.equal(res.scores, TCAV(net, ["0", "3"], **{**settings, "random_state": 5}).interpret(
        inputs, targets, concepts, random).scores)  # the settings do reach the function


def test_a_passed_deadline_stops_after_the_first_layer() -> None:
    net = _net(seed=5)
    tcav = TCAV(net, ["0", "3"], runs=2)
    args = (_images(6, 1), torch.tensor([0, 1, 2] * 2), {"c": ExampleSet(_images(8, 2, 3.0))},
            ExampleSet(_images(20, 3)))
    assert tcav.interpret(*args, deadline=0.0).layers == ["0"]
    full = tcav.interpret(*args)
    assert full.layers == ["0", "3"] and full.scores.shape[0] == 2


def test_cache_is_bounded() -> None:
    cache = CAVCache(max_entries=2)
    for i in range(3):
        cache.put(i, i)
    assert cache.get(0) is None and cache.get(2) == 2 and len(cache) == 2
    with pytest.raises(ValueError, match="Expected `max_entries`"):
        CAVCache(0)


def test_interpret_leaves_training_state_grads_and_hooks_alone_inside_inference_mode() -> None:
    net = _net(seed=4, bn=True).train()
    net[1].eval()  # a frozen BatchNorm must stay frozen
    for p in net.parameters():
        p.grad = torch.full_like(p, 7.0)
    stats = net[1].running_mean.clone()
    with torch.inference_mode():
        inputs = _images(6, 1)
        targets = torch.tensor([0, 1, 2, 0, 1, 2])
        res = TCAV(net, "3", runs=2).interpret(inputs, targets, {"c": ExampleSet(_images(8, 2, 3.0))},
                                               ExampleSet(_images(20, 3)))
    assert res.scores.shape == (1, 1, 3, 2)
    assert net.training and not net[1].training and net[3].training
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in net.parameters())
    assert torch.equal(net[1].running_mean, stats)
    assert all(not m._forward_hooks for m in net.modules())


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": []}, "Expected `layers`"),
        ({"runs": 1}, "Expected `runs` to be an integer >= 2"),
        ({"space": "spatial"}, "Expected `space` to be one of"),
        ({"correction": "fdr"}, "Expected `correction` to be one of"),
        ({"significance": 1.5}, "Expected `significance`"),
        ({"classifier": "tree"}, "Expected `classifier` to be one of"),
        ({"regularization": 0.0}, "Expected `regularization` to be positive"),
        ({"max_examples": 1}, "Expected `max_examples`"),
        ({"test": "welch"}, "Expected `test` to be one of"),
        ({"null_concepts": 1}, "Expected `null_concepts`"),
    ],
)
def test_tcav_rejects_bad_configuration(kwargs: dict[str, Any], match: str) -> None:
    opts: dict[str, Any] = {"layers": "3", **kwargs}
    with pytest.raises(ValueError, match=match):
        TCAV(_net(), **opts)


def test_clear_errors_on_bad_inputs() -> None:
    net = _net()
    seg = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))
    random = ExampleSet(_images(20, 1))
    with pytest.raises(ValueError, match="Nearest valid names"):
        TCAV(net, "33").cavs("33", {"c": ExampleSet(_images(4, 2))}, random)
    with pytest.raises(ValueError, match="at least 2 examples of concept 'c'"):
        TCAV(net, "3").cavs("3", {"c": ExampleSet(_images(1, 2))}, random)
    with pytest.raises(ValueError, match="at least one concept"):
        TCAV(net, "3").interpret(_images(2, 0), torch.tensor([0, 1]), {}, random)
    with pytest.raises(ValueError, match=r"integer tensor of shape \(3,\)"):
        layer_sensitivities(net, "3", _images(3, 0), torch.randn(1, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"target classes in \[0, 3\)"):
        layer_sensitivities(net, "3", _images(2, 0), torch.randn(1, 5), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="Expected `slots_per_pass` to be a positive integer"):
        layer_sensitivities(seg, "0", _images(1, 0), torch.randn(1, 4), torch.tensor([[0]]),
                            pixels=torch.tensor([[[0, 0]]]), slots_per_pass=0)
    with pytest.raises(ValueError, match="for segmentation pass `pixels`"):
        layer_sensitivities(seg, "0", _images(2, 0), torch.randn(1, 4), 0)
    with pytest.raises(ValueError, match="inside the 8x8 output"):
        layer_sensitivities(seg, "0", _images(1, 0), torch.randn(1, 4), torch.tensor([[0]]),
                            pixels=torch.tensor([[[8, 0]]]))
    with pytest.raises(ValueError, match=r"Expected `pixels` of shape \(1, P, 2\)"):
        layer_sensitivities(seg, "0", _images(1, 0), torch.randn(1, 4), torch.tensor([[0]]),
                            pixels=torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="space='flat'"):
        example_activations(net, "3", _images(2, 0), concept_windows(_images(2, 0), torch.ones(2, 1, 8, 8,
                            dtype=torch.bool), ["a"], sizes=(4,))[1].patches, space="flat")
    with pytest.raises(ValueError, match="Expected `min_overlap`"):
        concept_windows(_images(2, 0), torch.ones(2, 1, 8, 8, dtype=torch.bool), ["a"], min_overlap=0.0)
