import pytest
import torch
from torch import nn

from debugger.embed import (
    PatchEmbedder,
    embed_images,
    embed_patches,
    forward_to_layer,
    resample_patches,
    roi_pool_box,
    roi_pool_mask,
)
from debugger.patches import slic_superpixels, sliding_windows
from debugger.structures import PatchSet


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * 4 * 4, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.pool(self.relu(self.bn(self.conv(x))))
        seq = h.flatten(2)  # (B, D, L): a 3-D activation that cannot be pooled as an image
        return self.fc(self.flat(seq))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_resample_patches_exact_crop_and_fill():
    img = torch.arange(16.0).view(1, 1, 4, 4)
    out = resample_patches(img, torch.tensor([[2, 0, 4, 2]]), size=(2, 2))
    assert out.tolist() == [[[[2.0, 3.0], [6.0, 7.0]]]]
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, 2] = True
    out = resample_patches(img, torch.tensor([[2, 0, 4, 2]]), mask, size=(2, 2), fill=-1.0)
    assert out.tolist() == [[[[2.0, -1.0], [-1.0, -1.0]]]]
    # nearest-size upsampling of a full box reproduces the image
    full = resample_patches(img, torch.tensor([[0, 0, 4, 4]]))
    torch.testing.assert_close(full, img)


def test_resample_keep_aspect_pads_with_fill():
    img = torch.ones(1, 1, 4, 4)
    out = resample_patches(img, torch.tensor([[0, 1, 4, 3]]), size=(4, 4), fill=0.0, keep_aspect=True)
    # a 4x2 box grown to a 4x4 square: its own rows are kept, the margins above and below are the fill
    assert out[0, 0, :, 0].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert out[0, 0, 1:3].eq(1.0).all() and out[0, 0, 0].eq(0.0).all() and out[0, 0, 3].eq(0.0).all()


def test_roi_pool_mask_and_box_agree_on_cell_aligned_boxes():
    torch.manual_seed(0)
    feats = torch.randn(3, 5, 4, 4)
    boxes = torch.tensor([[0, 0, 8, 8], [8, 0, 16, 16], [4, 4, 12, 12]])
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        masks[i, y0:y1, x0:x1] = True
    by_mask = roi_pool_mask(feats, masks)
    by_box = roi_pool_box(feats, boxes, (16, 16), samples=2)
    torch.testing.assert_close(by_mask[:1], feats[0, :, :2, :2].mean((1, 2))[None])
    torch.testing.assert_close(by_mask[1], feats[1, :, :, 2:].mean((1, 2)))
    torch.testing.assert_close(by_box[:2], by_mask[:2])
    torch.testing.assert_close(by_box[2], feats[2, :, 1:3, 1:3].mean((1, 2)))
    mx = roi_pool_mask(feats, masks, reduce="max")
    torch.testing.assert_close(mx[1], feats[1, :, :, 2:].amax((1, 2)))


def test_forward_to_layer_stops_early_and_removes_hook():
    net = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    out = forward_to_layer(net, "conv", x)
    torch.testing.assert_close(out, net.conv(x))
    assert _hooks(net) == 0
    with pytest.raises(ValueError, match="never did"):
        forward_to_layer(nn.Sequential(nn.Identity(), nn.Linear(2, 2)), nn.Linear(2, 2), torch.zeros(1, 2))


def test_roi_matches_manual_pooling_and_one_forward_per_image_batch():
    torch.manual_seed(0)
    net = Net().eval()
    images = torch.rand(3, 3, 8, 8)
    ps = sliding_windows(images, sizes=(4,), strides=(4,))
    net.calls = 0
    emb = embed_patches(net, "relu", images, ps, mode="roi", batch_size=8)
    assert net.calls == 1
    feats = net.relu(net.bn(net.conv(images)))
    for p in (0, 5, 11):
        x0, y0, x1, y1 = ps.boxes[p].tolist()
        expected = feats[ps.image_index[p], :, y0:y1, x0:x1].mean((1, 2))
        torch.testing.assert_close(emb[p], expected)
    box = embed_patches(net, "relu", images, ps, mode="roi", roi_pool="box", roi_samples=4)
    torch.testing.assert_close(box, emb)


def test_resample_matches_manual_crop_forward():
    torch.manual_seed(0)
    net = Net().eval()
    images = torch.rand(2, 3, 8, 8)
    ps = sliding_windows(images, sizes=(4,), strides=(4,))
    net.calls = 0
    emb = embed_patches(net, "pool", images, ps, mode="resample", batch_size=3)
    assert net.calls == 3  # 8 patches in batches of 3
    p = 6
    x0, y0, x1, y1 = ps.boxes[p].tolist()
    crop = images[ps.image_index[p] : ps.image_index[p] + 1, :, y0:y1, x0:x1]
    up = nn.functional.interpolate(crop, size=(8, 8), mode="bilinear", align_corners=False)
    expected = net.pool(net.relu(net.bn(net.conv(up)))).mean((2, 3))[0]
    torch.testing.assert_close(emb[p], expected, atol=1e-5, rtol=1e-4)


def test_resample_masks_grey_out_outside_pixels():
    net = nn.Sequential(nn.Identity())
    images = torch.zeros(1, 3, 4, 4)
    images[0, :, :2] = 1.0
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    ps = PatchSet(image_index=torch.tensor([0]), boxes=torch.tensor([[0, 0, 4, 4]]), masks=masks)
    emb = embed_patches(net, "0", images, ps, mode="resample", fill=0.5)
    torch.testing.assert_close(emb, torch.full((1, 3), 0.75))  # half ones, half grey
    emb = embed_patches(net, "0", images, ps, mode="resample", fill=0.5, use_masks=False)
    torch.testing.assert_close(emb, torch.full((1, 3), 0.5))
    emb = embed_patches(net, "0", images, ps, mode="resample", fill="mean")
    torch.testing.assert_close(emb, torch.full((1, 3), 0.75))


def test_superpixel_roi_and_embedder_class():
    torch.manual_seed(0)
    net = Net()
    images = torch.rand(2, 3, 8, 8)
    ps = slic_superpixels(images, n_segments=(8,), min_pixels=1)  # 7 superpixels of 3 to 61 pixels
    emb = PatchEmbedder(net, "conv", mode="roi").embed(images, ps)
    # `conv` keeps the 8x8 resolution, so each superpixel's embedding is the conv map's mean over its mask
    with torch.no_grad():
        fmap = net.conv(images)[ps.image_index]  # (N, 4, 8, 8)
    masks = ps.masks.unsqueeze(1).float()
    expected = (fmap * masks).sum((2, 3)) / masks.sum((2, 3))
    assert emb.shape == (len(ps), 4) and len(ps) > 2
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)
    emb2 = PatchEmbedder(net, "conv", mode="resample", reduce="max").embed(images, ps)
    assert emb2.shape == (len(ps), 4)


def test_model_state_untouched():
    torch.manual_seed(0)
    net = Net().train()
    x = torch.rand(2, 3, 8, 8)
    net(x).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    running = net.bn.running_mean.clone()
    ps = sliding_windows(x, sizes=(4,))
    for mode in ("roi", "resample"):
        embed_patches(net, "relu", x, ps, mode=mode)
    assert net.training and net.bn.training
    assert torch.equal(net.bn.running_mean, running)
    for p, g in zip(net.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)
    assert _hooks(net) == 0


def test_unpoolable_layer_errors():
    net = Net()
    images = torch.rand(1, 3, 8, 8)
    ps = sliding_windows(images, sizes=(4,))
    with pytest.raises(ValueError, match="spatial feature map"):
        embed_patches(net, "fc", images, ps, mode="roi")
    with pytest.raises(ValueError, match="poolable"):
        embed_patches(nn.Sequential(nn.Flatten(2)), "0", images, ps, mode="resample")
    # a (B, D) layer is fine for resample
    assert embed_patches(net, "fc", images, ps, mode="resample").shape == (len(ps), 3)
    assert _hooks(net) == 0


def test_input_errors():
    net = Net()
    images = torch.rand(2, 3, 8, 8)
    ps = sliding_windows(images, sizes=(4,))
    with pytest.raises(ValueError, match="Nearest valid names"):
        embed_patches(net, "conv1", images, ps)
    with pytest.raises(ValueError, match="Expected `mode`"):
        embed_patches(net, "conv", images, ps, mode="crop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty probe set"):
        embed_patches(net, "conv", images[:0], ps)
    with pytest.raises(ValueError, match="image indices"):
        embed_patches(net, "conv", images[:1], ps)
    with pytest.raises(ValueError, match="patch masks of size"):
        embed_patches(net, "conv", torch.rand(2, 3, 9, 9), ps)
    with pytest.raises(ValueError, match="Expected `fill`"):
        embed_patches(net, "conv", images, ps, mode="resample", fill=(0.5, 0.5))
    with pytest.raises(ValueError, match="Expected `batch_size`"):
        embed_patches(net, "conv", images, ps, batch_size=0)


def test_hook_removed_when_forward_raises_before_the_layer():
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    net = Boom().train()
    images = torch.rand(1, 3, 4, 4)
    with pytest.raises(RuntimeError, match="boom"):
        embed_patches(net, "conv", images, sliding_windows(images, sizes=(4,)))
    assert _hooks(net) == 0 and net.training


def test_reduce_none_keeps_the_spatial_latent_tensor():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    images = torch.rand(2, 3, 8, 8)
    ps = sliding_windows(images, sizes=(4,), strides=(4,))
    # resample: the layer's whole map of the resized patch, and its mean is the pooled embedding
    lat = embed_patches(net, "2", images, ps, mode="resample", reduce="none")
    crops = resample_patches(images[ps.image_index], ps.boxes, ps.masks, fill=0.5)
    assert lat.shape == (len(ps), 4, 4, 4)
    torch.testing.assert_close(lat, net(crops))
    torch.testing.assert_close(lat.mean((2, 3)), embed_patches(net, "2", images, ps, mode="resample"))
    # roi: RoI-align's grid; on boxes aligned with feature cells it is exactly those cells
    lat = embed_patches(net, "2", images, ps, mode="roi", reduce="none", roi_samples=2)
    feats = net(images)
    assert lat.shape == (len(ps), 4, 2, 2)
    torch.testing.assert_close(lat[0], feats[0, :, 0:2, 0:2])
    torch.testing.assert_close(lat[5], feats[1, :, 0:2, 2:4])
    torch.testing.assert_close(lat.mean((2, 3)), embed_patches(net, "2", images, ps, mode="roi", roi_pool="box",
                                                                roi_samples=2))


def test_reduce_none_roi_zeroes_cells_outside_the_mask():
    net = nn.Sequential(nn.Identity())
    images = torch.ones(1, 1, 4, 4)
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :, :2] = True
    ps = PatchSet(torch.tensor([0]), torch.tensor([[0, 0, 4, 4]]), masks=masks)
    lat = embed_patches(net, "0", images, ps, mode="roi", reduce="none", roi_samples=2)
    assert lat[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_embed_images_matches_forward_and_rejects_flat_layers_for_none():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
    x = torch.rand(5, 3, 6, 6)
    torch.testing.assert_close(embed_images(net, "1", x, batch_size=2), net[:2](x))
    torch.testing.assert_close(embed_images(net, "1", x, reduce="max"), net[:2](x).amax((2, 3)))
    with pytest.raises(ValueError, match="spatial map"):
        embed_images(net, "2", x)
    with pytest.raises(ValueError, match="reduce"):
        embed_images(net, "1", x, reduce="sum")  # type: ignore[arg-type]


def test_resample_mask_pool_averages_only_the_patch_and_ignores_the_fill():
    # A pointwise network and crops resized 1:1, so the expected embedding is the mean of the network's output
    # over the patch's own pixels, whatever the fill.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 1), nn.ReLU())
    images = torch.rand(2, 3, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True  # box (2, 1, 5, 3): 3 wide, 2 high, full
    masks[1, 4:8, 4:8] = torch.rand(4, 4) > 0.4
    masks[1, 4, 4] = masks[1, 7, 7] = True  # the box stays (4, 4, 8, 8)
    boxes = torch.tensor([[2, 1, 5, 3], [4, 4, 8, 8]])
    ps = PatchSet(torch.tensor([0, 1]), boxes, masks, torch.zeros(2, 0), (), "slic")
    with torch.no_grad():
        pixel_out = net(images)  # (2, 5, 8, 8)
    expected = torch.stack([pixel_out[i][:, masks[i]].mean(1) for i in range(2)])
    for i, size in enumerate([(2, 3), (4, 4)]):
        one = PatchSet(ps.image_index[i : i + 1], boxes[i : i + 1], masks[i : i + 1], torch.zeros(1, 0), (), "slic")
        got = [embed_patches(net, "1", images, one, mode="resample", input_size=size, fill=f, resample_pool="mask")
               for f in (0.0, 0.5, 1.0)]
        for g in got:
            torch.testing.assert_close(g[0], expected[i], atol=1e-5, rtol=1e-5)
        # the seed's whole-map pooling does depend on the fill when the mask leaves part of the box empty
        whole = [embed_patches(net, "1", images, one, mode="resample", input_size=size, fill=f) for f in (0.0, 1.0)]
        if not masks[i, boxes[i, 1] : boxes[i, 3], boxes[i, 0] : boxes[i, 2]].all():
            assert not torch.allclose(whole[0], whole[1])


def test_resample_mask_pool_equals_map_pool_for_a_full_box():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    images = torch.rand(3, 3, 16, 16)
    ps = sliding_windows(images, sizes=(8,))
    by_map = embed_patches(net, "1", images, ps, mode="resample")
    by_mask = embed_patches(net, "1", images, ps, mode="resample", resample_pool="mask")
    torch.testing.assert_close(by_mask, by_map, atol=1e-5, rtol=1e-5)
    mx = embed_patches(net, "1", images, ps, mode="resample", reduce="max", resample_pool="mask")
    torch.testing.assert_close(mx, embed_patches(net, "1", images, ps, mode="resample", reduce="max"))
    assert PatchEmbedder(net, "1", mode="resample", resample_pool="mask").embed(images, ps).shape == by_map.shape


def test_resample_pool_rejects_bad_options():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    images = torch.rand(1, 3, 8, 8)
    ps = sliding_windows(images, sizes=(4,))
    with pytest.raises(ValueError, match="resample_pool"):
        embed_patches(net, "1", images, ps, mode="resample", resample_pool="box")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduce"):
        embed_patches(net, "1", images, ps, mode="resample", reduce="none", resample_pool="mask")
