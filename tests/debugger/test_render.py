import numpy as np
import pytest
import torch

from debugger.render import (
    CORRECT,
    WRONG,
    concept_gallery,
    confusion_heatmap,
    correctness_colors,
    declutter_grid,
    figure_to_array,
    mosaic,
    patch_tiles,
    score_colors,
    tsne_grid,
)
from debugger.structures import PatchSet


def _patches():
    images = torch.zeros(2, 3, 8, 8)
    images[0, 0] = 1.0  # red image
    images[1, 2] = 1.0  # blue image
    boxes = torch.tensor([[0, 0, 4, 4], [4, 4, 8, 8], [0, 0, 8, 8]])
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True
    masks[1, 4:, 4:] = True
    masks[2, :4, :] = True  # only the top half of image 1's box
    return images, PatchSet(torch.tensor([0, 1, 1]), boxes, masks)


def _rgb(fig_array, x, y):
    return fig_array[:, y, x].tolist()


def test_sequential_heatmap_uses_the_colour_map_over_0_1():
    fig = confusion_heatmap(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ["a", "b"], title="shadow")
    ax = fig.axes[0]
    image = ax.get_images()[0]
    assert image.get_cmap().name == "Blues"
    assert image.norm.vmin == 0.0 and image.norm.vmax == 1.0
    assert ax.get_title() == "shadow"
    arr = figure_to_array(fig)
    assert arr.dtype == torch.uint8 and arr.shape[0] == 3


def test_diverging_heatmap_is_centred_at_zero_and_symmetric():
    fig = confusion_heatmap(torch.tensor([[0.2, -0.5], [0.1, 0.0]]), diverging=True)
    image = fig.axes[0].get_images()[0]
    assert image.get_cmap().name == "RdBu"
    assert image.norm.vcenter == 0.0 and image.norm.vmin == -0.5 and image.norm.vmax == 0.5
    red_end, blue_end = image.get_cmap()(image.norm(-0.5)), image.get_cmap()(image.norm(0.5))
    assert red_end[0] > red_end[2] and blue_end[2] > blue_end[0]
    figure_to_array(fig)


def test_count_heatmap_scales_to_the_maximum_and_annotates_integers():
    fig = confusion_heatmap(torch.tensor([[3, 1], [0, 6]]))
    image = fig.axes[0].get_images()[0]
    assert image.norm.vmax == 6.0
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0", "1", "3", "6"]
    figure_to_array(fig)


def test_patch_tiles_crop_and_gray_out_pixels_outside_the_mask():
    images, patches = _patches()
    tiles = patch_tiles(images, patches, torch.tensor([0, 2]), size=4)
    assert tiles.shape == (2, 3, 4, 4)
    torch.testing.assert_close(tiles[0, :, 1, 1], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(tiles[1, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))  # top half: inside the mask
    torch.testing.assert_close(tiles[1, :, 3, 0], torch.tensor([0.5, 0.5, 0.5]))  # bottom half: neutral gray


def test_gallery_shows_top_patches_best_first_with_correctness_borders():
    images, patches = _patches()
    out = concept_gallery(images, patches, torch.tensor([0.1, 0.2, 0.9]), top_k=2, ncols=2, size=16,
                          correct=torch.tensor([1.0, 1.0, 0.0]))
    assert out.shape == (3, 20, 38) and out.dtype == torch.uint8
    # first tile = patch 2 (score 0.9, wrong): red border; second = patch 1 (right): blue border
    assert _rgb(out, 2, 2) == [round(255 * v) for v in WRONG]
    assert _rgb(out, 20, 2) == [round(255 * v) for v in CORRECT]
    assert _rgb(out, 28, 10) == [0, 0, 255]  # inside patch 1: the blue image


def test_border_colours():
    torch.testing.assert_close(correctness_colors(torch.tensor([1.0, 0.0])), torch.tensor([CORRECT, WRONG]))
    low, high = score_colors(torch.tensor([0.0, 1.0]))
    assert low[2] > low[0] and high[0] > high[2]


def test_mosaic_layout_size():
    out = mosaic(torch.zeros(5, 3, 4, 4), ncols=2, gap=1)
    assert out.shape == (3, 3 * 5 + 1, 2 * 5 + 1)


def test_declutter_takes_own_cell_then_nearest_free_then_hides():
    coords = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 1.0]])
    cells = declutter_grid(coords, grid=(2, 2), generator=torch.Generator().manual_seed(3))
    shown = cells[cells >= 0]
    assert shown.numel() == 4 and shown.unique().numel() == 4
    assert (cells == -1).sum() == 2
    assert cells[5] in (3, -1)
    # the points that share cell 0: whoever is first takes it, the next ones take its neighbours 1 and 2
    first_five = cells[:5]
    assert 0 in first_five.tolist()
    assert set(first_five[first_five >= 0].tolist()) <= {0, 1, 2, 3}


def test_declutter_nearest_free_cell_is_the_closest():
    coords = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.0, 0.0], [1.0, 1.0]])
    # 3x3 grid: both first points land in the centre cell 4; the second must go to a side neighbour (1, 3, 5, 7)
    cells = declutter_grid(coords, grid=(3, 3), generator=torch.Generator().manual_seed(0))
    assert cells[2] == 0 and cells[3] == 8
    first, second = cells[:2].tolist()
    assert 4 in (first, second)
    assert (first if second == 4 else second) in (1, 3, 5, 7)


def test_declutter_is_reproducible_and_finer_grids_show_more():
    coords = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    a = declutter_grid(coords, (4, 4), torch.Generator().manual_seed(1))
    b = declutter_grid(coords, (4, 4), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (declutter_grid(coords, (8, 8)) >= 0).sum() > (a >= 0).sum()


def test_tsne_grid_places_patches_and_draws_score_borders():
    pytest.importorskip("sklearn.manifold")
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=gen)
    boxes = torch.tensor([[0, 0, 4, 4], [4, 0, 8, 4], [0, 4, 4, 8], [4, 4, 8, 8]]).repeat(4, 1)
    patches = PatchSet(torch.arange(4).repeat_interleave(4), boxes)
    emb = torch.randn(16, 5, generator=gen)
    emb[:8] += 10
    scores = torch.zeros(16)
    scores[:8] = 1.0
    out, cells = tsne_grid(emb, images, patches, grid=(4, 4), tile=12, scores=scores, max_iter=250)
    assert out.shape == (3, 48, 48) and out.dtype == torch.uint8
    assert (cells >= 0).all() and cells.unique().numel() == 16
    high = (score_colors(torch.tensor([1.0]))[0] * 255).round().to(torch.uint8)
    r, c = divmod(int(cells[0]), 4)
    assert out[:, r * 12, c * 12].tolist() == high.tolist()


def test_tsne_grid_with_given_coords_skips_tsne_and_uses_correctness():
    images, patches = _patches()
    coords = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    out, cells = tsne_grid(torch.zeros(3, 2), images, patches, grid=(2, 2), tile=8, coords=coords,
                           correct=torch.tensor([0.0, 1.0, 1.0]))
    assert cells.tolist() == [0, 1, 2]
    assert out[:, 0, 0].tolist() == [round(255 * v) for v in WRONG]
    assert np.all(out[:, 8:, 8:].numpy() == 255)  # the empty cell stays white


def test_documented_errors():
    images, patches = _patches()
    with pytest.raises(ValueError, match=r"`matrix` to be a square"):
        confusion_heatmap(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="`class_names` to hold 2 names"):
        confusion_heatmap(torch.zeros(2, 2), ["a"])
    with pytest.raises(ValueError, match="`size` to be a positive"):
        patch_tiles(images, patches, torch.tensor([0]), size=0)
    with pytest.raises(ValueError, match="`images` of shape"):
        patch_tiles(images[:, :2], patches, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"patch `indices` in \[0, 3\)"):
        patch_tiles(images, patches, torch.tensor([3]))
    with pytest.raises(ValueError, match=r"`scores` to have shape \(3,\)"):
        concept_gallery(images, patches, torch.zeros(2))
    with pytest.raises(ValueError, match="`ncols` to be a positive"):
        mosaic(torch.zeros(1, 3, 2, 2), ncols=0)
    with pytest.raises(ValueError, match="`vmax` to be greater"):
        score_colors(torch.zeros(1), vmin=1.0, vmax=0.0)
    with pytest.raises(ValueError, match=r"`coords` to have shape \(P, 2\)"):
        declutter_grid(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="`grid` to be"):
        declutter_grid(torch.zeros(3, 2), grid=(0, 2))
    with pytest.raises(ValueError, match=r"`embeddings` to have shape \(3, D\)"):
        tsne_grid(torch.zeros(2, 4), images, patches)
    with pytest.raises(ValueError, match="`scores` to have 3 rows"):
        tsne_grid(torch.zeros(3, 4), images, patches, scores=torch.zeros(2))


def test_report_images_one_tag_per_picture_worst_first():
    from debugger.confusion import concept_confusion, concept_membership, confusion_difference
    from debugger.ranking import rank_failures
    from debugger.render import report_images
    from debugger.report import ConceptReport
    from debugger.structures import Concept

    images, patches = _patches()
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.9, 0.8]])
    concepts = [Concept(i, f"c{i}", torch.tensor([i]), scores[i]) for i in range(2)]
    membership = concept_membership(scores, patches.image_index, 2, top_k=1)
    preds, target = torch.tensor([1, 1]), torch.tensor([0, 1])
    cm = concept_confusion(preds, target, membership, 2)
    ranking = rank_failures(preds != target, membership, names=["c0", "c1"], min_support=1)
    report = ConceptReport("classification", "layer", 2, concepts, patches, membership, torch.tensor([[0], [1]]), cm,
                           ranking, class_names=("a", "b"), image_accuracy=(preds == target).float(),
                           diffs={"e1-e2": confusion_difference(cm, cm)})
    pictures = report_images(report, images, gallery_size=2, tile=8)
    first = report.ranking[0].name
    assert f"concepts/01-{first}/confusion" in pictures and f"concepts/01-{first}/gallery" in pictures
    assert f"diffs/e1-e2/02-{report.ranking[1].name}" in pictures
    assert len(pictures) == 6 and all(v.dtype == torch.uint8 and v.shape[0] == 3 for v in pictures.values())
    with pytest.raises(ValueError, match="the report's 2 probe images"):
        report_images(report, images[:1])


def test_gallery_caption_reads_name_verdict_annotation_and_statistics_exactly() -> None:
    from types import SimpleNamespace

    from debugger.render import gallery_caption

    row = SimpleNamespace(lift=float("inf"), lift_low=1.5, lift_high=float("inf"), error_in=0.25, error_out=0.0,
                          support=4, is_failure=False)
    assert gallery_caption("concept 03", row) == [
        "concept 03", "lift inf [1.50, inf] · error in 25% / out 0% · 4 images"]
    assert gallery_caption("concept 03", None, "shadow 90%") == ["concept 03 · shows shadow 90%", "not ranked"]


def test_caption_band_keeps_the_width_wraps_long_lines_and_draws_text_and_swatch() -> None:
    from debugger.render import caption_band, concept_color, with_caption

    short = caption_band(["one line"], 200)
    long = caption_band(["word " * 60], 200)
    assert short.shape[2] == long.shape[2] == 200 and long.shape[1] > short.shape[1]
    assert (short.float().mean(0) < 100).any()  # dark text on white
    band = caption_band(["x"], 200, color=concept_color(1))
    swatch = band[:, band.shape[1] // 2, 5].float() / 255
    torch.testing.assert_close(swatch, torch.tensor(concept_color(1)), atol=0.02, rtol=0)
    image = torch.zeros(3, 30, 200, dtype=torch.uint8)
    out = with_caption(image, ["x"])
    assert out.shape[1:] == (30 + caption_band(["x"], 200).shape[1], 200) and out[:, -30:].eq(0).all()


def test_outlined_images_draw_the_box_in_the_colour_on_the_whole_image() -> None:
    from debugger.render import outlined_images

    images = torch.zeros(2, 3, 8, 8)
    out = outlined_images(images, torch.tensor([1]), torch.tensor([[0, 0, 4, 4]]), size=16, color=(1.0, 0.0, 0.0))
    tile = out[:, 2:18, 2:18]
    assert tile[:, 0, 0].tolist() == [255, 0, 0] and tile[:, 7, 0].tolist() == [255, 0, 0]
    assert tile[:, 12, 12].tolist() == [0, 0, 0]  # outside the box: the image


def test_rows_without_samples_are_grey_and_rows_with_few_are_marked_not_zero():
    fig = confusion_heatmap(torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), ["a", "b", "c"],
                            row_counts=torch.tensor([10, 2, 0]))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a (n=10)", "b (n=2, few)", "c (n=0)"]
    texts = [t.get_text() for t in ax.texts]
    assert "no samples" in texts and texts.count("0") == 3  # row c prints nothing but "no samples"
    assert np.ma.getmaskarray(ax.get_images()[0].get_array())[2].all()  # drawn in the "bad" grey
    with pytest.raises(ValueError, match="Expected `row_counts` to hold 3 counts"):
        confusion_heatmap(torch.zeros(3, 3), row_counts=torch.tensor([1, 2]))


def test_a_change_of_confusion_reads_red_for_more_confusion_and_blue_for_more_right():
    diff = torch.tensor([[-0.2, 0.2], [0.0, 0.0]])  # class 0: right less often, confused with 1 more often
    fig = confusion_heatmap(diff, change=True)
    image = fig.axes[0].get_images()[0]
    cm, norm, shown = image.get_cmap(), image.norm, image.get_array()
    for cell in [(0, 0), (0, 1)]:
        r, _, b, _ = cm(norm(shown[cell]))
        assert r > b  # both worse: red
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["+0", "+0", "+20", "-20"]
    better = confusion_heatmap(-diff, change=True).axes[0].get_images()[0]
    r, _, b, _ = better.get_cmap()(better.norm(better.get_array()[0, 1]))
    assert b > r


def test_a_ten_class_matrix_fits_a_tensorboard_card_with_percent_cells():
    fig = confusion_heatmap(torch.full((10, 10), 0.1), [f"class{i}" for i in range(10)], title="shadow",
                            row_counts=torch.full((10,), 20))
    assert len(fig.axes) == 1  # annotated: numbers instead of a colour bar
    assert {t.get_text() for t in fig.axes[0].texts} == {"10"}
    assert figure_to_array(fig).shape[2] <= 480
