import pytest
import torch

from debugger.confusion import (
    ConceptConfusion,
    concept_confusion,
    concept_membership,
    confusion_accuracy,
    confusion_difference,
    confusion_iou,
    ensemble_check,
    normalize_confusion,
)


def _random_case(gen, n=40, c=5, k=4, p=120):
    preds = torch.randint(0, k, (n,), generator=gen)
    target = torch.randint(0, k, (n,), generator=gen)
    scores = torch.rand(c, p, generator=gen)
    image_index = torch.randint(0, n, (p,), generator=gen)
    return preds, target, scores, image_index


def test_membership_marks_the_source_images_of_each_concepts_top_patches():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.7], [0.0, 1.0, 0.2, 0.3]])
    image_index = torch.tensor([0, 1, 0, 2])
    m = concept_membership(scores, image_index, num_images=4, top_k=2)
    assert m.tolist() == [[True, False, False, False], [False, True, True, False]]


def test_membership_with_masks_is_the_union_of_the_top_patches_pixels():
    masks = torch.zeros(3, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = True
    masks[1, 1, 1] = True
    masks[2, 0, 1] = True
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    m = concept_membership(scores, torch.tensor([0, 0, 1]), num_images=2, top_k=2, masks=masks)
    assert m.shape == (1, 2, 2, 2)
    assert m[0, 0].tolist() == [[True, False], [False, True]]
    assert not m[0, 1].any()


def test_concept_confusion_equals_a_loop_over_sklearn_confusion_matrix():
    metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(0)
    preds, target, scores, image_index = _random_case(gen)
    m = concept_membership(scores, image_index, num_images=40, top_k=10)
    got = concept_confusion(preds, target, m, num_classes=4)
    for c in range(m.shape[0]):
        sel = m[c]
        want = metrics.confusion_matrix(target[sel].numpy(), preds[sel].numpy(), labels=list(range(4)))
        assert got[c].tolist() == want.tolist()
    normed = normalize_confusion(got, "true")
    for c in range(m.shape[0]):
        sel = m[c]
        want = metrics.confusion_matrix(
            target[sel].numpy(), preds[sel].numpy(), labels=list(range(4)), normalize="true"
        )
        torch.testing.assert_close(normed[c], torch.from_numpy(want).float().nan_to_num(0.0))


def test_segmentation_confusion_per_pixel_equals_sklearn_on_the_region_pixels():
    metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(1)
    n, k, h, w, p = 6, 3, 5, 5, 20
    preds = torch.randint(0, k, (n, h, w), generator=gen)
    target = torch.randint(0, k, (n, h, w), generator=gen)
    target[0, 0, :] = 255
    masks = torch.rand(p, h, w, generator=gen) > 0.6
    scores = torch.rand(2, p, generator=gen)
    image_index = torch.randint(0, n, (p,), generator=gen)
    m = concept_membership(scores, image_index, n, top_k=5, masks=masks)
    got = concept_confusion(preds, target, m, num_classes=k, ignore_index=255)
    for c in range(2):
        sel = m[c] & (target != 255)
        want = metrics.confusion_matrix(target[sel].numpy(), preds[sel].numpy(), labels=list(range(k)))
        assert got[c].tolist() == want.tolist()
    iou = confusion_iou(got)
    for c in range(2):
        sel = m[c] & (target != 255)
        want = metrics.jaccard_score(target[sel].numpy(), preds[sel].numpy(), labels=list(range(k)), average=None)
        torch.testing.assert_close(iou[c], torch.from_numpy(want).float())


def test_image_level_membership_counts_every_pixel_of_a_segmentation_image():
    preds = torch.zeros(2, 2, 2, dtype=torch.long)
    target = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])
    got = concept_confusion(preds, target, torch.tensor([[True, False]]), num_classes=2)
    assert got.tolist() == [[[1, 0], [3, 0]]]


def test_logits_are_argmaxed_over_dim_1():
    logits = torch.tensor([[0.1, 2.0], [3.0, 0.0]])
    got = concept_confusion(logits, torch.tensor([1, 1]), torch.ones(1, 2, dtype=torch.bool), num_classes=2)
    assert got.tolist() == [[[0, 0], [1, 1]]]


def test_metric_accumulated_over_batches_equals_functional_on_all():
    gen = torch.Generator().manual_seed(2)
    preds, target, scores, image_index = _random_case(gen, n=30)
    m = concept_membership(scores, image_index, num_images=30, top_k=8)
    metric = ConceptConfusion(num_concepts=5, num_classes=4)
    for lo in range(0, 30, 7):
        hi = min(lo + 7, 30)
        metric.update(preds[lo:hi], target[lo:hi], m[:, lo:hi])
    assert torch.equal(metric.compute(), concept_confusion(preds, target, m, 4))
    normed = ConceptConfusion(5, 4, normalize="true")
    normed.update(preds, target, m)
    torch.testing.assert_close(normed.compute(), normalize_confusion(concept_confusion(preds, target, m, 4)))


def test_metric_state_is_summed_across_processes():
    metric = ConceptConfusion(num_concepts=2, num_classes=3)
    assert metric._reductions["confmat"].__name__ == "dim_zero_sum"


def test_difference_is_second_minus_first_normalized():
    a = torch.tensor([[[4, 0], [2, 2]]])
    b = torch.tensor([[[3, 1], [0, 4]]])
    diff = confusion_difference(a, b)
    torch.testing.assert_close(diff, torch.tensor([[[-0.25, 0.25], [-0.5, 0.5]]]))


def test_accuracy_and_iou_of_empty_matrix_are_nan():
    empty = torch.zeros(3, 3, dtype=torch.long)
    assert torch.isnan(confusion_accuracy(empty))
    assert torch.isnan(confusion_iou(empty)).all()


def test_ensemble_check_counts_fixed_and_broken_errors():
    pa = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1], [0.2, 0.8]])
    pb = torch.tensor([[0.1, 0.9], [0.45, 0.55], [0.8, 0.2], [0.6, 0.4]])
    target = torch.tensor([1, 0, 0, 0])
    m = torch.tensor([[True, True, True, False], [False, False, False, True]])
    check = ensemble_check(pa, pb, target, m, num_classes=2)
    # concept 0: a wrong on 0, b wrong on 1; the ensemble is right on all three
    assert check.fixed_a.tolist() == [1, 0]
    assert check.fixed_b.tolist() == [1, 0]
    assert check.broken.tolist() == [0, 0]
    assert check.support.tolist() == [3, 1]
    torch.testing.assert_close(check.accuracy_ensemble, torch.tensor([1.0, 0.0]))
    assert check.improves.tolist() == [True, False]
    again = type(check).from_dict(check.to_dict())
    assert torch.equal(again.confusion_ensemble, check.confusion_ensemble)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 0}, "`top_k` to be a positive integer"),
        ({"scores": torch.rand(4)}, r"`scores` to have shape \(C, P\)"),
        ({"image_index": torch.tensor([0, 1])}, "`image_index` to have shape"),
        ({"image_index": torch.tensor([0, 1, 7])}, r"`image_index` to lie in \[0, 3\)"),
        ({"masks": torch.zeros(2, 4, 4, dtype=torch.bool)}, r"`masks` to have shape \(3, H, W\)"),
    ],
)
def test_membership_errors(kwargs, match):
    args = {"scores": torch.rand(2, 3), "image_index": torch.tensor([0, 1, 2]), "num_images": 3, "top_k": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        concept_membership(**args)


@pytest.mark.parametrize(
    ("preds", "target", "membership", "num_classes", "match"),
    [
        (torch.tensor([0, 1]), torch.tensor([0, 1]), torch.ones(1, 2, dtype=torch.bool), 0, "`num_classes`"),
        (torch.tensor([0, 1]), torch.zeros(2, 2), torch.ones(1, 2, dtype=torch.bool), 2, "`target` to have shape"),
        (torch.tensor([0, 1, 1]), torch.tensor([0, 1]), torch.ones(1, 2, dtype=torch.bool), 2, "`preds` to have shape"),
        (torch.rand(2, 3), torch.tensor([0, 1]), torch.ones(1, 2, dtype=torch.bool), 2, "class scores in `preds`"),
        (torch.tensor([0, 1]), torch.tensor([0, 1]), torch.ones(1, 2), 2, "`membership` to be a bool"),
        (torch.tensor([0, 1]), torch.tensor([0, 1]), torch.ones(1, 3, dtype=torch.bool), 2, "`membership` to have"),
        (torch.tensor([0, 5]), torch.tensor([0, 1]), torch.ones(1, 2, dtype=torch.bool), 2, r"lie in \[0, 2\)"),
    ],
)
def test_confusion_errors(preds, target, membership, num_classes, match):
    with pytest.raises(ValueError, match=match):
        concept_confusion(preds, target, membership, num_classes)


def test_other_documented_errors():
    with pytest.raises(ValueError, match="`normalize` to be one of"):
        normalize_confusion(torch.zeros(2, 2), "rows")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`second` to have the shape"):
        confusion_difference(torch.zeros(2, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="`probs_b` to have the shape"):
        ensemble_check(torch.rand(2, 2), torch.rand(2, 3), torch.tensor([0, 1]), torch.ones(1, 2, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="float class probabilities"):
        ensemble_check(torch.rand(2), torch.rand(2), torch.tensor([0, 1]), torch.ones(1, 2, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="`num_concepts` to be a positive"):
        ConceptConfusion(0, 2)
    with pytest.raises(ValueError, match="`num_classes` to be a positive"):
        ConceptConfusion(1, 0)
    with pytest.raises(ValueError, match="`normalize` to be None or one of"):
        ConceptConfusion(1, 2, normalize="rows")  # type: ignore[arg-type]
    metric = ConceptConfusion(2, 2)
    with pytest.raises(ValueError, match="2 concept rows"):
        metric.update(torch.tensor([0]), torch.tensor([0]), torch.ones(3, 1, dtype=torch.bool))


def test_pixel_counting_in_small_chunks_equals_one_chunk(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    preds = torch.randint(0, 3, (4, 6, 6), generator=gen)
    target = torch.randint(0, 3, (4, 6, 6), generator=gen)
    target[1, :2] = 255
    membership = torch.rand(5, 4, 6, 6, generator=gen) > 0.5
    whole = concept_confusion(preds, target, membership, 3, ignore_index=255)
    monkeypatch.setattr("debugger.confusion._CHUNK_ELEMENTS", 1)
    assert torch.equal(concept_confusion(preds, target, membership, 3, ignore_index=255), whole)
    image_level = concept_confusion(preds, target, membership.flatten(2).any(2), 3, ignore_index=255)
    pixel_all = concept_confusion(
        preds, target, membership.flatten(2).any(2)[:, :, None, None].expand(-1, -1, 6, 6), 3, ignore_index=255
    )
    assert torch.equal(image_level, pixel_all)
