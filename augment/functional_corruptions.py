"""Batched torch kernels of the corruption catalogue: blur, noise, exposure, tint, texture, compression, haze.

Each kernel takes images ``(B, C, H, W)`` in ``[0, 1]`` plus already-sampled per-sample parameters, changes the
whole image, and is pure and deterministic (noise and texture come from per-sample seeds). Locality is
separate: :func:`blend` mixes the corrupted image into the original through a region ``(B, 1, H, W)`` in
``[0, 1]``, the same convention as :mod:`augment.functional` (1 where a pixel changes).

Every kernel but compression is the identity at the parameter a strength of 0 maps to (radius 0, standard
deviation 0, gamma 1, ...); JPEG-like rounding is never exactly lossless, so the compression module skips the
kernel at strength 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from augment import functional as AF


def blend(images: Tensor, corrupted: Tensor, region: Tensor) -> Tensor:
    """``images + region · (corrupted - images)``: the corruption inside ``region``, the original outside.

    Shape:
        - images, corrupted: ``(B, C, H, W)``
        - region: ``(B, 1, H, W)`` in ``[0, 1]``
        - output: like ``images``

    Example:
        >>> blend(torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2), torch.tensor([[[[0.0, 0.5]]]]))
        tensor([[[[0.0000, 0.5000]]]])
    """
    return torch.lerp(images, corrupted, region.to(images.dtype))


def ellipse_region(blobs: Tensor, softness: Tensor, height: int, width: int) -> Tensor:
    """One soft ellipse per sample: the canopy region of :mod:`augment.functional` with a single blob.

    Shape:
        - blobs: ``(B, 5)`` as ``(cx, cy, rx, ry, angle)`` in pixels
        - softness: ``(B,)`` boundary blur sigma in pixels
        - output: ``(B, 1, H, W)``

    Example:
        >>> r = ellipse_region(torch.tensor([[2.0, 2.0, 1.0, 1.0, 0.0]]), torch.zeros(1), 5, 5)
        >>> int((r >= 0.5).sum())
        5
    """
    xs, ys = AF._grid(height, width, blobs.device, blobs.dtype)
    cx, cy, rx, ry, angle = (blobs[:, j].view(-1, 1, 1) for j in range(5))
    c, s = torch.cos(angle), torch.sin(angle)
    inv_rx, inv_ry = 1.0 / rx.clamp_min(1e-6), 1.0 / ry.clamp_min(1e-6)
    # The canopy region's maths for one ellipse, in place: each coordinate a row term plus a column term.
    u = (xs - cx) * (c * inv_rx) + (ys - cy) * (s * inv_rx)
    v = (ys - cy) * (c * inv_ry) - (xs - cx) * (s * inv_ry)
    m = torch.minimum(rx, ry)
    signed = torch.hypot(u, v).mul_(m.neg()).add_(m)
    return AF.soft_edge(signed, softness).unsqueeze(1)


def filter_per_sample(images: Tensor, kernels: Tensor) -> Tensor:
    """Correlate each sample with its own ``k × k`` kernel (shared by its channels), edges replicated.

    One grouped convolution over the whole batch.

    Shape:
        - images: ``(B, C, H, W)``
        - kernels: ``(B, k, k)`` with ``k`` odd
        - output: like ``images``

    Example:
        >>> k = torch.zeros(1, 3, 3); k[0, 1, 1] = 1.0
        >>> x = torch.rand(1, 2, 4, 4)
        >>> torch.equal(filter_per_sample(x, k), x)
        True
    """
    b, c, h, w = images.shape
    k = kernels.shape[-1]
    r = k // 2
    if r == 0:
        return images * kernels.to(images.dtype).view(b, 1, 1, 1)
    x = F.pad(images.reshape(1, b * c, h, w), (r, r, r, r), mode="replicate")
    weight = kernels.to(images.dtype).repeat_interleave(c, dim=0).unsqueeze(1)
    return F.conv2d(x, weight, groups=b * c).reshape(b, c, h, w)


def disc_kernels(radius: Tensor) -> Tensor:
    """Anti-aliased, normalised disc (pillbox) kernels: the point-spread function of a defocused lens.

    A tap at distance ``d`` from the centre weighs ``clamp(r + 1/2 - d, 0, 1)`` (its approximate coverage by
    the disc); radius 0 is the identity. All kernels share the side ``2 ceil(max r) + 1``.

    Shape:
        - radius: ``(B,)`` in pixels
        - output: ``(B, k, k)``

    Example:
        >>> disc_kernels(torch.tensor([0.0, 1.0]))[0].tolist()
        [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    r_max = math.ceil(float(radius.max())) if radius.numel() else 0
    taps = torch.arange(-r_max, r_max + 1, dtype=torch.float32)
    d = torch.sqrt(taps.view(1, -1, 1) ** 2 + taps.view(1, 1, -1) ** 2)
    w = (radius.float().view(-1, 1, 1) + 0.5 - d).clamp(0.0, 1.0)
    return w / w.sum(dim=(1, 2), keepdim=True)


def motion_kernels(length: Tensor, angle: Tensor) -> Tensor:
    """Normalised line kernels: a camera moving ``length`` pixels along direction ``angle`` during exposure.

    The segment centred on the origin is cut into two pieces per pixel of length, whose midpoints are splatted
    bilinearly onto the grid; length 0 is the identity. The kernel is symmetric under a half turn, so correlation and
    convolution agree.

    Shape:
        - length, angle: ``(B,)`` in pixels and radians
        - output: ``(B, k, k)`` with ``k = 2 ceil(max length / 2) + 1``

    Example:
        >>> motion_kernels(torch.tensor([2.0]), torch.tensor([0.0]))[0, 1].tolist()
        [0.25, 0.5, 0.25]
    """
    b = length.shape[0]
    r = math.ceil(float(length.max()) / 2) if b else 0
    k = 2 * r + 1
    # Each sample's own piece count, so a kernel never depends on the rest of its batch.
    pieces = 2 * length.float().ceil().clamp_min(1.0).view(b, 1)
    i = torch.arange(int(pieces.max()) if b else 0, dtype=torch.float32).view(1, -1)
    valid = (i < pieces).float() / pieces
    t = ((i + 0.5) / pieces - 0.5) * length.float().view(b, 1)
    px = r + t * torch.cos(angle.float()).view(b, 1)
    py = r + t * torch.sin(angle.float()).view(b, 1)
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    out = torch.zeros(b, k * k)
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi = (x0.long() + dx).clamp(0, k - 1)
        yi = (y0.long() + dy).clamp(0, k - 1)
        out.scatter_add_(1, yi * k + xi, wgt * valid)
    return out.view(b, k, k)


def defocus_blur(images: Tensor, radius: Tensor) -> Tensor:
    """Blur each sample with a disc of its own radius (see :func:`disc_kernels`).

    Shape:
        - images: ``(B, C, H, W)``
        - radius: ``(B,)`` in pixels
        - output: like ``images``

    Example:
        >>> defocus_blur(torch.ones(1, 1, 5, 5), torch.tensor([2.0])).allclose(torch.ones(1, 1, 5, 5))
        True
    """
    return filter_per_sample(images, disc_kernels(radius.cpu()).to(images.device))


def motion_blur(images: Tensor, length: Tensor, angle: Tensor) -> Tensor:
    """Blur each sample along a line of its own length and direction (see :func:`motion_kernels`).

    Shape:
        - images: ``(B, C, H, W)``
        - length, angle: ``(B,)``
        - output: like ``images``

    Example:
        >>> x = torch.zeros(1, 1, 3, 5); x[0, 0, 1, 2] = 1.0
        >>> motion_blur(x, torch.tensor([2.0]), torch.tensor([0.0]))[0, 0, 1].tolist()
        [0.0, 0.25, 0.5, 0.25, 0.0]
    """
    return filter_per_sample(images, motion_kernels(length.cpu(), angle.cpu()).to(images.device))


def gaussian_noise(images: Tensor, std: Tensor, seeds: Tensor) -> Tensor:
    """Add zero-mean Gaussian noise of standard deviation ``std[b]``, drawn from each sample's seed.

    Shape:
        - images: ``(B, C, H, W)``
        - std: ``(B,)``
        - seeds: ``(B,)`` int64 (see :func:`augment.functional.seeded_noise`)
        - output: like ``images``

    Example:
        >>> x = torch.zeros(1, 1, 2, 2)
        >>> torch.equal(gaussian_noise(x, torch.zeros(1), torch.tensor([3])), x)
        True
    """
    b, c, h, w = images.shape
    noise = AF.seeded_noise(seeds.cpu(), c, h, w).to(device=images.device, dtype=images.dtype)
    return torch.addcmul(images, noise, std.to(device=images.device, dtype=images.dtype).view(b, 1, 1, 1))


def adjust_brightness(images: Tensor, delta: Tensor) -> Tensor:
    """Add ``delta[b]`` to every pixel of sample ``b``.

    Shape:
        - images: ``(B, C, H, W)``
        - delta: ``(B,)``
        - output: like ``images``

    Example:
        >>> adjust_brightness(torch.full((1, 1, 1, 1), 0.5), torch.tensor([-0.25])).item()
        0.25
    """
    return images + delta.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Scale each sample's deviations from its own mean (over channels and pixels) by ``factor[b]``.

    Shape:
        - images: ``(B, C, H, W)``
        - factor: ``(B,)``, below 1 flattens, above 1 stretches
        - output: like ``images``

    Example:
        >>> adjust_contrast(torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([0.5])).tolist()
        [[[[0.25, 0.75]]]]
    """
    f = factor.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return torch.addcmul(mean * (1.0 - f), images, f)


def adjust_gamma(images: Tensor, gamma: Tensor) -> Tensor:
    """``x ** gamma[b]`` on pixels clamped to ``[0, 1]``: gamma above 1 darkens mid-tones, below 1 lifts them.

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - gamma: ``(B,)`` positive
        - output: like ``images``

    Example:
        >>> adjust_gamma(torch.full((1, 1, 1, 1), 0.25), torch.tensor([0.5])).item()
        0.5
    """
    g = gamma.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
    # exp(g · log x): vectorised where pow with a per-sample exponent is not; log 0 = -inf gives 0.
    return images.clamp(0.0, 1.0).log_().mul_(g).exp_()


def tint(images: Tensor, shift: Tensor) -> Tensor:
    """Add a per-sample colour ``shift[b, c]`` to channel ``c``.

    Shape:
        - images: ``(B, C, H, W)``
        - shift: ``(B, C)``
        - output: like ``images``

    Example:
        >>> tint(torch.zeros(1, 2, 1, 1), torch.tensor([[0.1, -0.2]])).flatten().tolist()
        [0.10000000149011612, -0.20000000298023224]
    """
    b, c = shift.shape
    return images + shift.to(device=images.device, dtype=images.dtype).view(b, c, 1, 1)


def value_noise(seeds: Tensor, height: int, width: int, cells: int = 4, octaves: int = 3) -> Tensor:
    """Procedural texture: octaves of bilinearly upsampled random grids, scaled to ``[-1, 1]`` per sample.

    Octave ``o`` is a ``(cells·2^o + 1)²`` grid of uniform values with weight ``2^-o`` (a 1/f spectrum, like
    stains, foliage or fabric); the random grids come from each sample's seed on the CPU.

    Shape:
        - seeds: ``(B,)`` int64
        - output: ``(B, 1, H, W)`` float32 on the CPU

    Example:
        >>> t = value_noise(torch.tensor([0, 1]), 16, 16)
        >>> tuple(t.shape), float(t.amin()), float(t.amax())
        ((2, 1, 16, 16), -1.0, 1.0)
    """
    b = seeds.shape[0]
    out = torch.zeros(b, 1, height, width)
    g = torch.Generator()
    grids: list[list[Tensor]] = []
    for s in seeds.tolist():
        g.manual_seed(int(s))
        grids.append([torch.rand(cells * 2**o + 1, cells * 2**o + 1, generator=g) for o in range(octaves)])
    for o in range(octaves):
        grid = torch.stack([gs[o] for gs in grids])[:, None]
        out += 0.5**o * F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=True)
    lo = out.amin(dim=(1, 2, 3), keepdim=True)
    hi = out.amax(dim=(1, 2, 3), keepdim=True)
    return (out - lo) / (hi - lo).clamp_min(1e-12) * 2.0 - 1.0


def texture_overlay(images: Tensor, texture: Tensor, amplitude: Tensor) -> Tensor:
    """Add ``amplitude[b] · texture`` (a ``[-1, 1]`` map shared by the channels) to each sample.

    Shape:
        - images: ``(B, C, H, W)``
        - texture: ``(B, 1, H, W)``
        - amplitude: ``(B,)``
        - output: like ``images``

    Example:
        >>> texture_overlay(torch.zeros(1, 1, 1, 2), torch.tensor([[[[-1.0, 1.0]]]]), torch.tensor([0.5])).tolist()
        [[[[-0.5, 0.5]]]]
    """
    a = amplitude.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
    return torch.addcmul(images, texture.to(device=images.device, dtype=images.dtype), a)


def haze(images: Tensor, density: Tensor, airlight: Tensor | float = 0.8) -> Tensor:
    """Atmospheric scattering with a uniform depth: ``x · (1 - density) + airlight · density``.

    ``density`` is ``1 - t`` with ``t`` the transmission of Koschmieder's model; ``airlight`` is the colour of
    the scattered light (a grey-white by default).

    Shape:
        - images: ``(B, C, H, W)``
        - density: ``(B,)`` in ``[0, 1]``
        - airlight: scalar or ``(C,)``
        - output: like ``images``

    Example:
        >>> haze(torch.zeros(1, 1, 1, 1), torch.tensor([0.5]), 0.8).item()
        0.4000000059604645
    """
    d = density.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
    air = AF._per_channel("airlight", airlight, images)
    return torch.lerp(images, air.expand_as(images), d)


# JPEG's quantisation tables (ITU-T T.81 Annex K), luminance and chrominance.
_JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=torch.float32)
_JPEG_CHROMA = torch.full((8, 8), 99.0)
_JPEG_CHROMA[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]])
# BT.601 full-range RGB -> YCbCr, as JPEG (JFIF) uses; offsets are applied separately.
_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def dct_matrix(n: int = 8) -> Tensor:
    """The orthonormal DCT-II matrix ``D``: ``D @ x`` transforms a length-``n`` column.

    Example:
        >>> d = dct_matrix()
        >>> bool(torch.allclose(d @ d.T, torch.eye(8), atol=1e-6))
        True
    """
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def jpeg_tables(quality: Tensor) -> Tensor:
    """Luminance and chrominance quantisation tables at each sample's JPEG quality (IJG scaling).

    Shape:
        - quality: ``(B,)`` in ``[1, 100]``
        - output: ``(B, 2, 8, 8)``, steps of at least 1

    Example:
        >>> jpeg_tables(torch.tensor([50.0]))[0, 0, 0, :3].tolist()
        [16.0, 11.0, 10.0]
    """
    q = quality.float().clamp(1.0, 100.0).view(-1, 1, 1, 1)
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    base = torch.stack([_JPEG_LUMA, _JPEG_CHROMA])[None]
    return ((base * scale + 50.0) / 100.0).floor().clamp_min(1.0)


def jpeg_compress(images: Tensor, quality: Tensor) -> Tensor:
    """JPEG-like compression: 8×8 blockwise DCT, quantisation at each sample's quality, and back.

    Three-channel images go through YCbCr (luma table on Y, chroma table on Cb and Cr, no chroma subsampling);
    other channel counts use the luma table on every channel. Pixels are quantised in 0..255 units; images are
    padded to a multiple of 8 by edge replication and cropped back. A few samples at a time, so every pass
    stays in cache.

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - quality: ``(B,)`` in ``[1, 100]``
        - output: like ``images``

    Example:
        >>> x = torch.full((1, 3, 8, 8), 0.5)
        >>> bool(torch.allclose(jpeg_compress(x, torch.tensor([10.0])), x, atol=1 / 255))
        True
    """
    b, c, h, w = images.shape
    dev = images.device
    tables = jpeg_tables(quality.cpu()).to(dev)  # (B, 2, 8, 8)
    if c == 3:
        steps = torch.stack([tables[:, 0], tables[:, 1], tables[:, 1]], dim=1)  # (B, 3, 8, 8)
    else:
        steps = tables[:, :1].expand(b, c, 8, 8)
    d = dct_matrix().to(dev)
    # The 2-D DCT of a block flattened row-major is one product with kron(D, D): one GEMM for all blocks.
    forward = torch.kron(d, d).T.contiguous()
    inverse = forward.T.contiguous()
    ycc = _YCC.to(dev)
    ycc_inv = torch.linalg.inv(_YCC).to(dev)
    out = torch.empty_like(images)
    step = AF.chunk_rows(h, w)
    for i in range(0, b, step):
        rows = slice(i, i + step)
        out[rows] = _jpeg_chunk(images[rows], steps[rows], forward, inverse, ycc, ycc_inv)
    return out


def _jpeg_chunk(images: Tensor, steps: Tensor, forward: Tensor, inverse: Tensor, ycc: Tensor,
                ycc_inv: Tensor) -> Tensor:
    b, c, h, w = images.shape
    ph, pw = (-h) % 8, (-w) % 8
    x = images.float() * 255.0
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    hh, ww = h + ph, w + pw
    if c == 3:
        x = torch.einsum("oc,bchw->bohw", ycc, x)
        x[:, 0] -= 128.0
    else:
        x = x - 128.0
    blocks = x.reshape(b, c, hh // 8, 8, ww // 8, 8).transpose(3, 4).reshape(b, c, -1, 64)
    coef = blocks @ forward
    q = steps.reshape(b, c, 1, 64)
    coef = coef.div_(q).round_().mul_(q) @ inverse
    x = coef.reshape(b, c, hh // 8, ww // 8, 8, 8).transpose(3, 4).reshape(b, c, hh, ww)
    if c == 3:
        x[:, 0] += 128.0
        x = torch.einsum("oc,bchw->bohw", ycc_inv, x)
    else:
        x = x + 128.0
    return (x[:, :, :h, :w] / 255.0).to(images.dtype)
