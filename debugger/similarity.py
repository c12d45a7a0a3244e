"""Similarity overlays (Fong 2020, seed 004 Ch. 6): where else does the model see what it sees at one location?

At a layer, the activation vector of a query location (one spatial position of one image's feature map) is
compared by cosine similarity with the vector at every location of the same or other images. Upsampled to the
image size, the similarity map is the overlay: bright where the model's representation resembles the query.
Optionally, the activations are grouped by non-negative matrix factorisation (the thesis's "group" view): each
location is a non-negative mix of a few components, and each component's map shows where it is present.

:func:`location_similarity` and :func:`query_vector` are the pure algorithm; :func:`similarity_overlay` captures
a model's layer in chunks of images (bounded memory) and upsamples; :func:`nmf_groups` factorises captured
activations (scikit-learn's NMF, imported on use).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debugger.capture import capture, resolve_layer

__all__ = ["SimilarityOverlay", "location_similarity", "nmf_groups", "query_vector", "similarity_overlay"]


def _check_acts(activations: Tensor, name: str = "activations") -> None:
    if not isinstance(activations, Tensor) or activations.dim() != 4:
        shape = tuple(activations.shape) if isinstance(activations, Tensor) else type(activations).__name__
        raise ValueError(f"Expected `{name}` to be a tensor of shape (N, C, h, w), but got {shape!r}.")


def location_similarity(activations: Tensor, query: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of ``query`` with the activation vector at every location of every image.

    A location whose vector is all zeros (a dead position after a ReLU) has similarity 0.

    Shape:
        - activations: ``(N, C, h, w)``
        - query: ``(C,)``
        - return: ``(N, h, w)`` in ``[-1, 1]``

    Raises:
        ValueError: if the shapes disagree.

    Example:
        >>> acts = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])    # location 0 points along x, location 1 along y
        >>> location_similarity(acts, torch.tensor([1.0, 1.0]))
        tensor([[[0.7071, 0.7071]]])
    """
    _check_acts(activations)
    if query.shape != (activations.shape[1],):
        raise ValueError(f"Expected `query` to have shape ({activations.shape[1]},), but got {tuple(query.shape)!r}.")
    a = activations.float()
    q = query.to(a)
    dots = torch.einsum("nchw,c->nhw", a, q)
    norms = a.norm(dim=1) * q.norm()
    return dots / norms.clamp(min=eps)


def query_vector(activation: Tensor, location: tuple[int, int], image_size: tuple[int, int] | None = None) -> Tensor:
    """The activation vector at ``location`` of one image's feature map.

    Args:
        activation: one image's activations.
        location: ``(row, column)``; in image pixels when ``image_size`` is given (mapped to the feature cell that
            covers that pixel), else in feature-map cells.
        image_size: ``(H, W)`` of the image the activation came from.

    Shape:
        - activation: ``(C, h, w)`` or ``(1, C, h, w)``
        - return: ``(C,)``

    Raises:
        ValueError: if the location lies outside the image or the map.

    Example:
        >>> act = torch.arange(8.0).reshape(2, 2, 2)
        >>> query_vector(act, (3, 0), image_size=(4, 4))          # pixel row 3 lies in feature row 1
        tensor([2., 6.])
    """
    if activation.dim() == 4 and activation.shape[0] == 1:
        activation = activation[0]
    if activation.dim() != 3:
        raise ValueError(f"Expected `activation` to have shape (C, h, w), but got {tuple(activation.shape)!r}.")
    h, w = activation.shape[-2:]
    row, col = location
    if image_size is not None:
        H, W = image_size
        if not (0 <= row < H and 0 <= col < W):
            raise ValueError(f"Expected `location` to lie inside the image of size {(H, W)!r}, but got {location!r}.")
        row, col = row * h // H, col * w // W
    elif not (0 <= row < h and 0 <= col < w):
        raise ValueError(f"Expected `location` to lie inside the feature map of size {(h, w)!r}, but got {location!r}.")
    return activation[:, row, col]


def similarity_overlay(
    model: nn.Module,
    layer: str,
    query_image: Tensor,
    location: tuple[int, int],
    images: Tensor | None = None,
    chunk_size: int = 64,
    upsample: bool = True,
) -> Tensor:
    """Similarity of the query location's representation with every location of ``images``, as overlays.

    Args:
        model: the network (eval mode, no grad, modes restored; see :func:`debugger.capture.capture`).
        layer: a dotted layer name.
        query_image: the image holding the query location.
        location: ``(row, column)`` in the query image's pixels.
        images: the images to compare with (default: the query image itself).
        chunk_size: images per forward.
        upsample: bilinearly upsample the maps to the images' size; else keep the layer's resolution.

    Shape:
        - query_image: ``(C, H, W)`` or ``(1, C, H, W)``
        - images: ``(N, C, H, W)``
        - return: ``(N, 1, H, W)`` (or ``(N, 1, h, w)`` without upsampling)

    Raises:
        ValueError: on an unknown layer, a layer without a spatial map, or a location outside the image.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> img = torch.randn(1, 3, 8, 8)
        >>> sim = similarity_overlay(net, "0", img, (2, 5))
        >>> tuple(sim.shape), round(float(sim[0, 0, 2, 5]), 4)
        ((1, 1, 8, 8), 1.0)
    """
    resolve_layer(model, layer)
    if query_image.dim() == 3:
        query_image = query_image[None]
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"Expected `chunk_size` to be a positive integer, but got {chunk_size!r}.")
    _, acts = capture(model, layer, query_image)
    q_act = acts[layer]
    if q_act.dim() != 4:
        raise ValueError(f"Expected `layer` to give a (N, C, h, w) map, but got shape {tuple(q_act.shape)!r}.")
    size = (int(query_image.shape[-2]), int(query_image.shape[-1]))
    query = query_vector(q_act, location, size)
    targets = query_image if images is None else images
    maps = []
    for start in range(0, targets.shape[0], chunk_size):
        chunk = targets[start:start + chunk_size]
        if images is None:
            a = q_act
        else:
            _, got = capture(model, layer, chunk)
            a = got[layer]
        sim = location_similarity(a, query)[:, None]
        if upsample:
            sim = F.interpolate(sim, size=tuple(chunk.shape[-2:]), mode="bilinear", align_corners=False)
        maps.append(sim.cpu())
    return torch.cat(maps)


class SimilarityOverlay:
    """Similarity overlays at one layer of a model (see :func:`similarity_overlay`).

    Args:
        model: the network.
        layer: a dotted layer name.
        chunk_size: images per forward.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> SimilarityOverlay(net, "1").attribute(torch.randn(3, 3, 8, 8), torch.randn(3, 8, 8), (0, 0)).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(self, model: nn.Module, layer: str, chunk_size: int = 64) -> None:
        self.model = model
        self.layer = layer
        self.chunk_size = chunk_size

    def attribute(self, images: Tensor, query_image: Tensor, location: tuple[int, int]) -> Tensor:
        """Overlays on ``images`` of the similarity with ``query_image`` at ``location``."""
        return similarity_overlay(self.model, self.layer, query_image, location, images, self.chunk_size)


def nmf_groups(activations: Tensor, n_groups: int, seed: int = 0, max_iter: int = 400) -> tuple[Tensor, Tensor]:
    """Group a layer's locations by NMF: ``A ≈ maps · components`` over all locations of all images.

    Negative activations (before a ReLU) are clipped to 0, since NMF needs a non-negative matrix.

    Args:
        activations: a layer's activations.
        n_groups: the number of components.
        seed: seeds NMF's initialisation.
        max_iter: NMF's iteration budget.

    Returns:
        ``(maps (N, G, h, w), components (G, C))``: each location's weight on each component, and the components.

    Shape:
        - activations: ``(N, C, h, w)``

    Raises:
        ValueError: if ``n_groups`` is not a positive integer at most the number of channels.

    Example:
        >>> acts = torch.zeros(1, 2, 1, 4)
        >>> acts[0, 0, 0, :2] = 1.0                              # left half: channel 0; right half: channel 1
        >>> acts[0, 1, 0, 2:] = 1.0
        >>> maps, comps = nmf_groups(acts, 2)
        >>> group = maps[0, :, 0].argmax(0).tolist()             # each location's dominant component
        >>> group[0] == group[1] != group[2] == group[3]
        True
    """
    from sklearn.decomposition import NMF

    _check_acts(activations)
    n, c, h, w = activations.shape
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or not 1 <= n_groups <= c:
        raise ValueError(f"Expected `n_groups` to be an integer in [1, {c}], but got {n_groups!r}.")
    x = activations.detach().float().clamp(min=0).permute(0, 2, 3, 1).reshape(-1, c).cpu().numpy()
    nmf = NMF(n_components=n_groups, init="nndsvda", random_state=seed, max_iter=max_iter)
    weights = nmf.fit_transform(x)
    maps = torch.from_numpy(weights).float().reshape(n, h, w, n_groups).permute(0, 3, 1, 2).contiguous()
    return maps.to(activations.device), torch.from_numpy(nmf.components_).float().to(activations.device)

