"""Pictures of a concept analysis, for TensorBoard and reports (matplotlib on the Agg backend, no display).

- :func:`confusion_heatmap`: a sequential colour map for one model's proportions (samples per row beside the
  class, empty rows grey), a diverging one centred at 0 for differences (red = worse, blue = better, as in seed
  000 §5.3; for a change of a confusion matrix, more confusion off the diagonal is worse).
- :func:`gallery_caption` / :func:`caption_band` / :func:`with_caption`: what a picture shows, drawn into it.
- :func:`patch_tiles` / :func:`concept_gallery`: a concept's top patches cut out of their images (superpixels
  on neutral gray) as a mosaic.
- :func:`declutter_grid` / :func:`tsne_grid`: the image patch view of seed 000 §5.1 — t-SNE of the patch
  embeddings, drawn on a grid: patches in random order, each in the cell under its point or the nearest free
  cell, hidden once the grid is full; borders coloured by correctness or by concept score.

Mosaics are ``uint8`` tensors ``(3, H, W)`` (TensorBoard's default ``CHW``); :func:`figure_to_array` turns a
matplotlib figure into the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.colors import Colormap, TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

from debugger.structures import PatchSet  # noqa: E402

NEUTRAL_GRAY = 0.5
CORRECT = (0.17, 0.40, 0.85)  # blue: right
WRONG = (0.84, 0.15, 0.16)  # red: wrong


def figure_to_array(fig: Figure, close: bool = True) -> Tensor:
    """Render a figure to a ``uint8`` tensor ``(3, H, W)`` (and close it, so figures do not pile up).

    Shape:
        - output: ``(3, H, W)`` uint8
    """
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
    out = torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).contiguous()
    if close:
        plt.close(fig)
    return out


def confusion_heatmap(
    matrix: Tensor,
    class_names: Sequence[str] | None = None,
    title: str = "",
    diverging: bool = False,
    annotate: bool | None = None,
    cmap: str | None = None,
    row_counts: Tensor | None = None,
    min_row_count: int = 5,
    change: bool = False,
) -> Figure:
    """A confusion matrix (rows = ground truth, columns = prediction) as a heatmap.

    Proportions use a sequential map over ``[0, 1]``; counts over ``[0, max]``; differences (``diverging=True``)
    use ``RdBu`` centred at 0 with symmetric limits, so red is negative and blue positive. A change of a
    confusion matrix (``change=True``, e.g. :func:`~debugger.confusion.confusion_difference`) is coloured by
    what it means: more on the diagonal or less off it is better (blue), more confusion off the diagonal is
    worse (red); the cells print the signed change in percentage points. Proportions print as whole percents;
    annotated maps have no colour bar (the numbers say it) and are sized to be read at TensorBoard's card width.

    Args:
        matrix: proportions, counts, or a difference.
        class_names: tick labels.
        title: figure title.
        diverging: draw a difference.
        annotate: write values in the cells (default: when ``K <= 12``).
        cmap: override the colour map.
        row_counts: samples behind each row: printed beside the class (``n=12``); rows without samples are
            greyed with "no samples" (not a row of zeros reading as "never right"), rows with fewer than
            ``min_row_count`` are marked "few" and their values printed in grey.
        min_row_count: fewest samples for a row to read without a mark.
        change: colour a difference of confusion matrices by better (blue) / worse (red); implies diverging.

    Shape:
        - matrix: ``(K, K)``; row_counts: ``(K,)``

    Raises:
        ValueError: if ``matrix`` is not square or ``class_names`` / ``row_counts`` has the wrong length.

    Example:
        >>> fig = confusion_heatmap(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), ["cat", "dog"])
        >>> figure_to_array(fig).dtype
        torch.uint8
        >>> fig = confusion_heatmap(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), ["cat", "dog"],
        ...                         row_counts=torch.tensor([3, 0]))
        >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
        ['cat (n=3, few)', 'dog (n=0)']
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"Expected `matrix` to be a square (K, K) tensor, but got {tuple(matrix.shape)!r}.")
    k = matrix.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else list(class_names)
    if len(names) != k:
        raise ValueError(f"Expected `class_names` to hold {k} names, but got {len(names)}.")
    counts = None
    if row_counts is not None:
        counts = [int(c) for c in row_counts.reshape(-1).tolist()]
        if len(counts) != k:
            raise ValueError(f"Expected `row_counts` to hold {k} counts, but got {len(counts)}.")
    values = matrix.detach().double().cpu().numpy()
    shown = values.copy()
    if change:
        diverging = True
        shown = np.where(np.eye(k, dtype=bool), values, -values)  # > 0 = better everywhere
    empty = np.zeros(k, dtype=bool) if counts is None else np.array([c == 0 for c in counts])
    shown[empty] = np.nan  # drawn as the colour map's "bad" grey
    labels = names if counts is None else [
        f"{n} (n={c}{', few' if 0 < c < min_row_count else ''})" for n, c in zip(names, counts, strict=True)
    ]
    annotated = annotate if annotate is not None else k <= 12
    percent = matrix.is_floating_point() and not diverging  # proportions: whole percents fit a small cell
    # Sized in pixels for TensorBoard's image card (about 350 px wide): small cells, numbers instead of a colour
    # bar when the cells are annotated, so the picture is read at the card's width without enlarging it.
    cell = 28 if k > 6 else 40
    label_px = 14 + 6.5 * max(map(len, labels))
    name_px = 6.5 * max(map(len, names)) if max(map(len, names)) > 3 else 12
    width_px = label_px + cell * k + 34 + (0 if annotated and not change else 70)
    height_px = 44 + cell * k + name_px + 24
    fig, ax = plt.subplots(figsize=(width_px / 100, height_px / 100), dpi=100)
    if diverging:
        finite = np.abs(shown[np.isfinite(shown)])
        limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        colors = plt.get_cmap(cmap or "RdBu").with_extremes(bad="0.85")
        image = ax.imshow(shown, cmap=colors, norm=TwoSlopeNorm(0.0, -limit, limit))
    else:
        is_count = not matrix.is_floating_point()
        top = float(np.nanmax(values)) if is_count and values.size and np.nanmax(values) > 0 else 1.0
        colors = plt.get_cmap(cmap or "Blues").with_extremes(bad="0.85")
        image = ax.imshow(shown, cmap=colors, vmin=0.0, vmax=top)
    if not annotated or change:
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        if change:
            bar.set_label("blue = better, red = worse", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    ax.set_xticks(range(k), names, rotation=90 if max(map(len, names)) > 3 else 0, fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("ground truth", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    for i in np.flatnonzero(empty):
        ax.text((k - 1) / 2, float(i), "no samples", ha="center", va="center", fontsize=8, color="0.35")
    if annotated:
        norm, cm = image.norm, image.get_cmap()
        for (i, j), v in np.ndenumerate(values):
            if not np.isfinite(v) or empty[i]:
                continue
            r, g, b, _ = cm(norm(shown[i, j]))
            color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
            if counts is not None and counts[i] < min_row_count:
                color = "0.45"
            if not matrix.is_floating_point():
                text = f"{int(v)}"
            elif change:
                text = f"{100 * v:+.0f}"
            else:
                text = f"{100 * v:.0f}" if percent else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7 if cell < 40 else 8, color=color)
    fig.tight_layout()
    return fig


def patch_tiles(
    images: Tensor, patches: PatchSet, indices: Tensor, size: int = 32, pad: float = NEUTRAL_GRAY
) -> Tensor:
    """Cut patches out of their images and resize them to tiles; pixels outside a patch's mask become gray.

    Images are expected in ``[0, 1]`` (min-max scale them first otherwise).

    Shape:
        - images: ``(N, C, H, W)`` (1-channel images are repeated to RGB)
        - indices: ``(k,)`` patch indices
        - output: ``(k, 3, size, size)`` float

    Raises:
        ValueError: if ``size`` is not positive, ``images`` is not a batch of 1- or 3-channel images, or an index
            is out of range.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"Expected `size` to be a positive integer, but got {size!r}.")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Expected `images` of shape (N, 1 or 3, H, W), but got {tuple(images.shape)!r}.")
    idx = indices.long().reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(patches)):
        raise ValueError(f"Expected patch `indices` in [0, {len(patches)}), but got {idx.tolist()!r}.")
    imgs = images.detach().float().cpu()
    if imgs.shape[1] == 1:
        imgs = imgs.expand(-1, 3, -1, -1)
    tiles = torch.full((idx.numel(), 3, size, size), pad)
    for t, i in enumerate(idx.tolist()):
        x0, y0, x1, y1 = (int(v) for v in patches.boxes[i].tolist())
        if x1 <= x0 or y1 <= y0:
            continue
        crop = imgs[int(patches.image_index[i]), :, y0:y1, x0:x1]
        if patches.masks is not None:
            m = patches.masks[i, y0:y1, x0:x1].cpu()
            crop = torch.where(m.unsqueeze(0), crop, torch.full_like(crop, pad))
        tiles[t] = F.interpolate(crop.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False)[0]
    return tiles.clamp(0, 1)


def add_borders(tiles: Tensor, colors: Tensor, width: int = 2) -> Tensor:
    """Paint a border of ``width`` pixels in each tile's RGB colour.

    Shape:
        - tiles: ``(k, 3, S, S)``
        - colors: ``(k, 3)`` in ``[0, 1]``
        - output: ``(k, 3, S, S)``
    """
    out = tiles.clone()
    c = colors.float().view(-1, 3, 1, 1)
    out[:, :, :width, :] = c
    out[:, :, -width:, :] = c
    out[:, :, :, :width] = c
    out[:, :, :, -width:] = c
    return out


def mosaic(tiles: Tensor, ncols: int, gap: int = 2, background: float = 1.0) -> Tensor:
    """Arrange tiles in rows of ``ncols``, as a ``uint8`` image ``(3, H, W)``.

    Shape:
        - tiles: ``(k, 3, S, S)`` in ``[0, 1]``
        - output: ``(3, rows * (S + gap) + gap, ncols * (S + gap) + gap)`` uint8
    """
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"Expected `ncols` to be a positive integer, but got {ncols!r}.")
    k, _, s, _ = tiles.shape
    rows = max(1, -(-k // ncols))
    canvas = torch.full((3, rows * (s + gap) + gap, ncols * (s + gap) + gap), background)
    for t in range(k):
        r, c = divmod(t, ncols)
        y, x = gap + r * (s + gap), gap + c * (s + gap)
        canvas[:, y : y + s, x : x + s] = tiles[t]
    return _to_uint8(canvas)


def concept_gallery(
    images: Tensor,
    patches: PatchSet,
    scores: Tensor,
    top_k: int = 16,
    ncols: int = 8,
    size: int = 32,
    correct: Tensor | None = None,
) -> Tensor:
    """A concept's ``top_k`` patches by score, best first, as a mosaic; borders show correctness when given.

    Args:
        images: the probe images, in ``[0, 1]``.
        patches: the patches the scores refer to.
        scores: the concept's score for every patch.
        top_k: tiles shown.
        ncols: tiles per row.
        size: tile side in pixels.
        correct: per patch, 1 = the model is right on it, 0 = wrong (fractions allowed, e.g. pixel accuracy);
            drawn blue→red.

    Shape:
        - images: ``(N, C, H, W)``
        - scores: ``(P,)``
        - correct: ``(P,)``
        - output: ``(3, H', W')`` uint8

    Raises:
        ValueError: if ``scores`` does not have one entry per patch, or as :func:`patch_tiles`.

    Example:
        >>> from debugger.structures import PatchSet
        >>> ps = PatchSet(torch.tensor([0, 0]), torch.tensor([[0, 0, 4, 4], [4, 4, 8, 8]]))
        >>> concept_gallery(torch.rand(1, 3, 8, 8), ps, torch.tensor([0.2, 0.9]), size=8, ncols=2).shape
        torch.Size([3, 12, 22])
    """
    if scores.dim() != 1 or scores.shape[0] != len(patches):
        raise ValueError(f"Expected `scores` to have shape ({len(patches)},), but got {tuple(scores.shape)!r}.")
    k = min(top_k, len(patches))
    order = torch.topk(torch.nan_to_num(scores.float(), nan=-torch.inf), k).indices
    tiles = patch_tiles(images, patches, order, size)
    if correct is not None:
        tiles = add_borders(tiles, correctness_colors(correct.float()[order]), width=max(1, size // 16))
    return mosaic(tiles, ncols=min(ncols, max(k, 1)))


def correctness_colors(correct: Tensor) -> Tensor:
    """Blue for right (1), red for wrong (0), blended in between (per-pixel accuracy of a patch).

    Shape:
        - correct: ``(k,)`` in ``[0, 1]``
        - output: ``(k, 3)``
    """
    c = correct.float().clamp(0, 1).unsqueeze(1)
    return c * torch.tensor(CORRECT) + (1 - c) * torch.tensor(WRONG)


def score_colors(scores: Tensor, cmap: str = "RdBu_r", vmin: float = 0.0, vmax: float = 1.0) -> Tensor:
    """Concept-score border colours on a diverging map (seed 000 §5.1), ``vmin``→blue, ``vmax``→red by default.

    Shape:
        - scores: ``(k,)``
        - output: ``(k, 3)``
    """
    if vmax <= vmin:
        raise ValueError(f"Expected `vmax` to be greater than `vmin` {vmin!r}, but got {vmax!r}.")
    colormap: Colormap = matplotlib.colormaps[cmap]
    unit = ((scores.float() - vmin) / (vmax - vmin)).clamp(0, 1).nan_to_num(0.5)
    return torch.from_numpy(colormap(unit.numpy())[:, :3]).float()


def declutter_grid(
    coords: Tensor,
    grid: tuple[int, int] = (16, 16),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Place 2-D points on a grid without overlap (seed 000 §5.1).

    Points are visited in random order; each takes the cell containing it, or if that is taken the nearest
    free cell (Euclidean distance between cell centres, ties to the lowest cell index); once every cell is
    taken the remaining points are hidden (``-1``). A finer grid (zooming in) shows more points.

    Args:
        coords: 2-D positions (e.g. t-SNE), rescaled to the grid's extent.
        grid: ``(rows, cols)``.
        generator: the visiting order's randomness; seed 0 when None.

    Returns:
        The cell of every point as ``row * cols + col``, or -1 when hidden.

    Shape:
        - coords: ``(P, 2)`` as ``(x, y)``
        - output: ``(P,)`` int64

    Raises:
        ValueError: if ``coords`` is not ``(P, 2)`` or the grid is empty.

    Example:
        >>> declutter_grid(torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.9, 0.0]]), grid=(2, 2)).tolist()
        [0, 3, 1]
    """
    if coords.dim() != 2 or coords.shape[1] != 2:
        raise ValueError(f"Expected `coords` to have shape (P, 2), but got {tuple(coords.shape)!r}.")
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"Expected `grid` to be (rows, cols) with positive sizes, but got {grid!r}.")
    p = coords.shape[0]
    out = torch.full((p,), -1, dtype=torch.long)
    if p == 0:
        return out
    xy = coords.detach().double().cpu()
    lo, hi = xy.min(0).values, xy.max(0).values
    unit = (xy - lo) / (hi - lo).clamp_min(1e-12)
    col = (unit[:, 0] * cols).floor().clamp(0, cols - 1)
    row = (unit[:, 1] * rows).floor().clamp(0, rows - 1)
    centres = torch.stack(
        torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"),
        dim=-1,
    ).reshape(-1, 2)
    free = torch.ones(rows * cols, dtype=torch.bool)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    order = torch.randperm(p, generator=generator)
    remaining = rows * cols
    for i in order.tolist():
        if remaining == 0:
            break
        cell = int(row[i]) * cols + int(col[i])
        if not free[cell]:
            d = ((centres - centres[cell]) ** 2).sum(1)
            d[~free] = torch.inf
            cell = int(torch.argmin(d))
        free[cell] = False
        out[i] = cell
        remaining -= 1
    return out


def tsne_grid(
    embeddings: Tensor,
    images: Tensor,
    patches: PatchSet,
    grid: tuple[int, int] = (16, 16),
    tile: int = 24,
    correct: Tensor | None = None,
    scores: Tensor | None = None,
    coords: Tensor | None = None,
    seed: int = 0,
    **tsne_kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """The de-cluttered t-SNE image patch view with border overlays.

    Args:
        embeddings: patch embeddings (projected with scikit-learn's ``TSNE``).
        images: the probe images, in ``[0, 1]``.
        patches: the patches the embeddings belong to.
        grid: ``(rows, cols)`` cells.
        tile: cell side in pixels.
        correct: per patch 1 = right, 0 = wrong (fractions blend); blue/red borders.
        scores: per patch concept score in ``[0, 1]``; diverging borders. Takes precedence over ``correct``.
        coords: precomputed 2-D layout (skips t-SNE).
        seed: t-SNE's ``random_state`` and the grid's visiting order.
        **tsne_kwargs: passed to ``sklearn.manifold.TSNE``.

    Returns:
        The mosaic ``(3, rows * tile, cols * tile)`` uint8 and the cell of every patch (-1 = hidden).

    Shape:
        - embeddings: ``(P, D)``
        - correct, scores: ``(P,)``

    Raises:
        ValueError: if the number of embeddings, patches, scores or correctness values disagree.
    """
    p = len(patches)
    if embeddings.dim() != 2 or embeddings.shape[0] != p:
        raise ValueError(f"Expected `embeddings` to have shape ({p}, D), but got {tuple(embeddings.shape)!r}.")
    for name, value in (("correct", correct), ("scores", scores), ("coords", coords)):
        if value is not None and value.shape[0] != p:
            raise ValueError(f"Expected `{name}` to have {p} rows, one per patch, but got {tuple(value.shape)!r}.")
    if coords is None:
        coords = tsne_coords(embeddings, seed=seed, **tsne_kwargs)
    cells = declutter_grid(coords, grid, torch.Generator().manual_seed(seed))
    rows, cols = grid
    shown = (cells >= 0).nonzero().squeeze(1)
    canvas = torch.ones(3, rows * tile, cols * tile)
    if shown.numel():
        tiles = patch_tiles(images, patches, shown, tile)
        width = max(1, tile // 12)
        if scores is not None:
            tiles = add_borders(tiles, score_colors(scores[shown]), width)
        elif correct is not None:
            tiles = add_borders(tiles, correctness_colors(correct[shown]), width)
        for t, cell in enumerate(cells[shown].tolist()):
            r, c = divmod(cell, cols)
            canvas[:, r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = tiles[t]
    return _to_uint8(canvas), cells


def tsne_coords(embeddings: Tensor, seed: int = 0, **tsne_kwargs: Any) -> Tensor:
    """2-D t-SNE of the embeddings with scikit-learn (perplexity capped below the number of points).

    Shape:
        - embeddings: ``(P, D)``
        - output: ``(P, 2)`` float64
    """
    from sklearn.manifold import TSNE

    p = embeddings.shape[0]
    if p < 3:
        return torch.zeros(p, 2, dtype=torch.float64) + torch.arange(p, dtype=torch.float64).unsqueeze(1)
    kwargs = {"perplexity": min(30.0, (p - 1) / 3), "init": "pca", "random_state": seed}
    kwargs.update(tsne_kwargs)
    x = embeddings.detach().float().cpu().flatten(1).numpy()
    return torch.from_numpy(TSNE(n_components=2, **kwargs).fit_transform(x)).double()


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def report_images(
    report: Any,
    images: Tensor,
    max_concepts: int = 8,
    gallery_size: int = 16,
    tile: int = 32,
) -> dict[str, Tensor]:
    """The pictures of a :class:`~debugger.report.ConceptReport`, keyed by TensorBoard tag.

    One tag per picture (TensorBoard keeps only 10 images per tag), for the worst ``max_concepts`` concepts of
    the ranking: ``concepts/<rank>-<name>/confusion`` (row-normalized, sequential), ``.../gallery`` (top
    patches with correctness borders), and ``diffs/<diff>/<rank>-<name>`` (diverging) for every difference.

    Args:
        report: the report.
        images: the probe images the report was computed on, in ``[0, 1]``.
        max_concepts: concepts drawn, worst first.
        gallery_size: patches per gallery.
        tile: gallery tile side.

    Shape:
        - images: ``(N, C, H, W)``
        - values: ``(3, H', W')`` uint8

    Raises:
        ValueError: if ``images`` does not hold the report's probe images.
    """
    from debugger.confusion import normalize_confusion

    n = int(report.membership.shape[1])
    if images.dim() != 4 or images.shape[0] != n:
        raise ValueError(f"Expected `images` to be the report's {n} probe images (N, C, H, W), "
                         f"but got {tuple(images.shape)!r}.")
    ids = [c.id for c in report.concepts]
    names = list(report.class_names) or None
    correct = None
    if report.image_accuracy is not None:
        correct = report.image_accuracy.float()[report.patches.image_index]
    out: dict[str, Tensor] = {}
    for row in report.ranking[:max_concepts]:
        i = ids.index(row.concept)
        concept = report.concepts[i]
        prefix = f"concepts/{row.rank:02d}-{concept.name}"
        title = f"{concept.name}: error {100 * row.error_in:.0f}% vs {100 * row.error_out:.0f}%"
        fig = confusion_heatmap(normalize_confusion(report.confusion[i]), names, title=title,
                                row_counts=report.confusion[i].sum(-1))
        out[f"{prefix}/confusion"] = figure_to_array(fig)
        out[f"{prefix}/gallery"] = concept_gallery(images, report.patches, concept.scores, top_k=gallery_size,
                                                   size=tile, correct=correct)
        for diff_name, diff in report.diffs.items():
            fig = confusion_heatmap(diff[i], names, title=f"{diff_name}: {concept.name}", change=True)
            out[f"diffs/{diff_name}/{row.rank:02d}-{concept.name}"] = figure_to_array(fig)
    return out


# -- captions: what an image in TensorBoard shows, drawn into it ------------------------------------------------

CAPTION_FONT = 10  # points at 100 dpi, about 14 px tall: legible when TensorBoard shrinks an image to its card


def concept_color(concept_id: int) -> tuple[float, float, float]:
    """The colour of a concept id (matplotlib's ``tab10``, cycled), the same in every picture of a run.

    Example:
        >>> concept_color(0) == concept_color(10)
        True
    """
    r, g, b, _ = plt.get_cmap("tab10")(int(concept_id) % 10)
    return (float(r), float(g), float(b))


def _percent(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.0f}%"


def _ratio(x: float) -> str:
    if np.isnan(x):
        return "n/a"
    return "inf" if np.isinf(x) else f"{x:.2f}"


def gallery_caption(name: str, failure: Any | None = None, shows: str | None = None) -> list[str]:
    """The caption lines of a concept gallery: its name and what it shows, then its failure statistics.

    Args:
        name: the concept's lasting name (e.g. ``concept 7``).
        failure: its :class:`~debugger.ranking.ConceptFailure` row (lift with interval, error inside / outside
            its slice, images in the slice), or None when it was not ranked.
        shows: the annotated concept its top patches show (e.g. ``shadow 80%``), where the data has annotations.

    Example:
        >>> from types import SimpleNamespace as row
        >>> gallery_caption("concept 7", row(lift=2.5, lift_low=1.25, lift_high=4.0, error_in=0.5, error_out=0.2,
        ...                                   support=12, is_failure=True), "shadow 80%")
        ['concept 7 · FAILURE · shows shadow 80%', 'lift 2.50 [1.25, 4.00] · error in 50% / out 20% · 12 images']
    """
    head = name
    if failure is not None and bool(getattr(failure, "is_failure", False)):
        head += " · FAILURE"
    if shows:
        head += f" · shows {shows}"
    if failure is None:
        return [head, "not ranked"]
    stats = (f"lift {_ratio(failure.lift)} [{_ratio(failure.lift_low)}, {_ratio(failure.lift_high)}] · "
             f"error in {_percent(failure.error_in)} / out {_percent(failure.error_out)} · {failure.support} images")
    return [head, stats]


def failure_images_caption(name: str, wrong: int, pairs: Sequence[str] = ()) -> list[str]:
    """The caption lines of a failure concept's misclassified images: what they are, how many of how many
    misclassified probe images, and ``true → predicted`` for each, left to right.

    Example:
        >>> for line in failure_images_caption("concept 02", 9, ["ring → bar", "star → tee"]):
        ...     print(line)
        concept 02: misclassified probe images, its patch outlined
        2 of the 9 misclassified probe images
        true → predicted, left to right: ring → bar, star → tee
    """
    lines = [f"{name}: misclassified probe images, its patch outlined"]
    if pairs:
        lines += [f"{len(pairs)} of the {wrong} misclassified probe images",
                  "true → predicted, left to right: " + ", ".join(pairs)]
    return lines


def caption_band(
    lines: Sequence[str], width: int, color: Sequence[float] | None = None, fontsize: int = CAPTION_FONT
) -> Tensor:
    """Lines of text on a white band ``width`` pixels wide (long lines wrap), with a colour swatch at the left
    when ``color`` is given (a concept's legend colour).

    Shape:
        - output: ``(3, h, width)`` uint8

    Example:
        >>> tuple(caption_band(["hello"], 120).shape[::2])
        (3, 120)
    """
    import textwrap

    if not isinstance(width, int) or width < 16:
        raise ValueError(f"Expected `width` to be an integer of at least 16 pixels, but got {width!r}.")
    swatch = 14 if color is not None else 0
    chars = max(8, int((width - swatch - 6) / (0.5 * fontsize * 100 / 72)))
    wrapped = [w for line in lines for w in (textwrap.wrap(line, chars) or [""])]
    line_px = 1.45 * fontsize * 100 / 72
    height = int(np.ceil(line_px * max(1, len(wrapped)) + 6))
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    fig.patch.set_facecolor("white")
    if color is not None:
        fig.patches.append(matplotlib.patches.Rectangle((3 / width, 3 / height), 8 / width, 1 - 6 / height,
                                                        transform=fig.transFigure, color=tuple(color)[:3]))
    for i, text in enumerate(wrapped):
        y = 1 - (3 + line_px * (i + 0.5)) / height
        fig.text((swatch + 3) / width, y, text, fontsize=fontsize, va="center", ha="left", family="DejaVu Sans")
    band = figure_to_array(fig)
    out = torch.full((3, band.shape[1], width), 255, dtype=torch.uint8)
    w = min(width, band.shape[2])
    out[:, :, :w] = band[:, :, :w]
    return out


def with_caption(image: Tensor, lines: Sequence[str], color: Sequence[float] | None = None) -> Tensor:
    """``image`` (``uint8`` or ``[0, 1]`` float, ``(3, H, W)``) under a :func:`caption_band` of its width.

    Shape:
        - output: ``(3, h + H, W)`` uint8

    Example:
        >>> with_caption(torch.zeros(3, 10, 100, dtype=torch.uint8), ["a"]).shape[0]
        3
    """
    img = image if image.dtype == torch.uint8 else _to_uint8(image.float())
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"Expected `image` of shape (3, H, W), but got {tuple(image.shape)!r}.")
    width = max(int(img.shape[2]), 16)
    if img.shape[2] < width:
        img = torch.cat([img, torch.full((3, img.shape[1], width - img.shape[2]), 255, dtype=torch.uint8)], 2)
    return torch.cat([caption_band(lines, width, color), img], 1)


def outlined_images(
    images: Tensor,
    image_index: Tensor,
    boxes: Tensor,
    size: int = 96,
    color: Sequence[float] = WRONG,
    ncols: int = 4,
) -> Tensor:
    """Whole images, each with one box outlined (e.g. a failure concept's patch on a misclassified image).

    Shape:
        - images: ``(N, C, H, W)`` in ``[0, 1]``
        - image_index: ``(k,)`` which image each example shows; boxes: ``(k, 4)`` ``x0, y0, x1, y1`` in its pixels
        - output: ``(3, H', W')`` uint8

    Example:
        >>> outlined_images(torch.rand(2, 3, 8, 8), torch.tensor([1]), torch.tensor([[0, 0, 4, 4]]), size=16).shape
        torch.Size([3, 20, 20])
    """
    if not isinstance(size, int) or size < 4:
        raise ValueError(f"Expected `size` to be an integer of at least 4, but got {size!r}.")
    imgs = images.detach().float().cpu()
    if imgs.shape[1] == 1:
        imgs = imgs.expand(-1, 3, -1, -1)
    k = int(image_index.numel())
    tiles = torch.ones(max(k, 1), 3, size, size)
    line = max(1, size // 32)
    c = torch.tensor(tuple(color)[:3], dtype=torch.float32).view(3, 1, 1)
    for t in range(k):
        img = imgs[int(image_index[t])]
        h, w = img.shape[-2:]
        tile = F.interpolate(img.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False)[0]
        x0, y0, x1, y1 = boxes[t].tolist()
        sx, sy = size / w, size / h
        a0, b0 = int(x0 * sx), int(y0 * sy)
        a1, b1 = min(size, max(a0 + 2 * line, int(round(x1 * sx)))), min(size, max(b0 + 2 * line, int(round(y1 * sy))))
        tile[:, b0:b1, a0 : a0 + line] = c
        tile[:, b0:b1, a1 - line : a1] = c
        tile[:, b0 : b0 + line, a0:a1] = c
        tile[:, b1 - line : b1, a0:a1] = c
        tiles[t] = tile
    return mosaic(tiles.clamp(0, 1), ncols=min(ncols, max(k, 1)))
