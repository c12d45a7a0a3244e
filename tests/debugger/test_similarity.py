"""Similarity overlays: cosine similarity of a query location with every location, and NMF groups."""

import pytest
import torch
from torch import nn

from debugger.similarity import SimilarityOverlay, location_similarity, nmf_groups, query_vector, similarity_overlay


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_cosine_similarity_by_hand():
    acts = torch.tensor([[[[3.0, 0.0, -1.0]], [[4.0, 0.0, 0.0]]]])  # (1, 2, 1, 3)
    sim = location_similarity(acts, torch.tensor([0.0, 1.0]))
    assert torch.allclose(sim, torch.tensor([[[0.8, 0.0, 0.0]]]))
    assert location_similarity(acts, torch.tensor([-1.0, 0.0]))[0, 0, 2] == pytest.approx(1.0)


def test_the_overlay_of_an_image_with_itself_peaks_at_the_query_location():
    net = conv_net()
    img = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    for loc in [(0, 0), (5, 7), (11, 3)]:
        sim = similarity_overlay(net, "0", img, loc)
        assert sim.shape == (1, 1, 12, 12)
        assert sim[0, 0, loc[0], loc[1]] == pytest.approx(1.0, abs=1e-5)
        assert int(sim.flatten().argmax()) == loc[0] * 12 + loc[1]


def test_a_strided_layer_maps_pixels_to_their_cell_and_the_maps_are_chunk_invariant():
    net = conv_net()
    g = torch.Generator().manual_seed(3)
    img, others = torch.randn(3, 12, 12, generator=g), torch.randn(5, 3, 12, 12, generator=g)
    small = similarity_overlay(net, "2", img, (7, 2), upsample=False)
    assert small.shape == (1, 1, 6, 6) and small[0, 0, 3, 1] == pytest.approx(1.0, abs=1e-5)
    a = similarity_overlay(net, "2", img, (7, 2), others, chunk_size=2)
    b = SimilarityOverlay(net, "2", chunk_size=64).attribute(others, img, (7, 2))
    assert a.shape == (5, 1, 12, 12) and torch.allclose(a, b, atol=1e-6)
    # the other images contain the query image's content where we paste it: similarity 1 there
    others[1] = img
    c = similarity_overlay(net, "2", img, (7, 2), others, upsample=False)
    assert c[1, 0, 3, 1] == pytest.approx(1.0, abs=1e-5)


def test_the_model_is_left_as_it_was():
    net = conv_net().train()
    similarity_overlay(net, "1", torch.randn(1, 3, 8, 8), (1, 1), torch.randn(2, 3, 8, 8))
    assert all(m.training for m in net.modules()) and all(p.grad is None for p in net.parameters())
    assert all(not m._forward_hooks for m in net.modules())


def test_query_vector_reads_the_cell():
    act = torch.arange(12.0).reshape(3, 2, 2)
    assert query_vector(act[None], (1, 0)).tolist() == [2.0, 6.0, 10.0]
    assert query_vector(act, (0, 7), image_size=(8, 8)).tolist() == [1.0, 5.0, 9.0]


def test_nmf_recovers_a_known_product_up_to_permutation_and_scale():
    g = torch.Generator().manual_seed(0)
    components = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.5], [0.0, 3.0, 0.0, 1.0, 0.0]])
    weights = torch.rand(2 * 4 * 4, 2, generator=g)
    acts = (weights @ components).reshape(2, 4, 4, 5).permute(0, 3, 1, 2)
    maps, comps = nmf_groups(acts, 2, max_iter=2000)
    assert maps.shape == (2, 2, 4, 4) and comps.shape == (2, 5)
    found = comps / comps.norm(dim=1, keepdim=True)
    want = components / components.norm(dim=1, keepdim=True)
    cos = found @ want.T
    assert max(cos[0, 0] * cos[1, 1], cos[0, 1] * cos[1, 0]) > 0.99
    recon = torch.einsum("nghw,gc->nchw", maps, comps)
    assert torch.allclose(recon, acts, atol=1e-2 * float(acts.max()))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="Expected `query` to have shape"):
        location_similarity(torch.zeros(1, 2, 3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="Expected `activations`"):
        location_similarity(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="Expected `location` to lie inside the image"):
        query_vector(torch.zeros(2, 2, 2), (8, 0), image_size=(8, 8))
    with pytest.raises(ValueError, match="Expected `location` to lie inside the feature map"):
        query_vector(torch.zeros(2, 2, 2), (2, 0))
    with pytest.raises(ValueError, match="Expected `layer`"):
        similarity_overlay(conv_net(), "nope", torch.zeros(1, 3, 8, 8), (0, 0))
    with pytest.raises(ValueError, match=r"Expected `layer` to give a \(N, C, h, w\) map"):
        similarity_overlay(conv_net(), "4", torch.zeros(1, 3, 8, 8), (0, 0))
    with pytest.raises(ValueError, match="Expected `n_groups`"):
        nmf_groups(torch.zeros(1, 2, 2, 2), 3)
