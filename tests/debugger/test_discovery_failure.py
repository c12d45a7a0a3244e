"""The "finds the planted failure" mechanism on tiny data: patches → embeddings → discovery → slices → ranking."""

import pytest
import torch
from torch import nn

from debugger.capture import run_capture
from debugger.confusion import concept_membership
from debugger.discovery import concept_precision, discover_concepts
from debugger.embed import embed_patches
from debugger.patches import sliding_windows
from debugger.ranking import rank_failures


def planted(n: int = 60, size: int = 16, seed: int = 0):
    """Bright textured images; half carry a dark 'shadow' square, a third a red 'blob' (a harmless concept)."""
    g = torch.Generator().manual_seed(seed)
    images = 0.6 + 0.3 * torch.rand(n, 3, size, size, generator=g)
    masks = torch.zeros(n, 2, size, size, dtype=torch.bool)
    shadow = torch.arange(n) % 2 == 0
    blob = torch.arange(n) % 3 == 0
    for i in range(n):
        if shadow[i]:
            y, x = torch.randint(0, size - 8 + 1, (2,), generator=g).tolist()
            images[i, :, y : y + 8, x : x + 8] *= 0.25
            masks[i, 0, y : y + 8, x : x + 8] = True
        if blob[i]:
            y, x = torch.randint(0, size - 6 + 1, (2,), generator=g).tolist()
            images[i, :, y : y + 6, x : x + 6] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)
            masks[i, 1, y : y + 6, x : x + 6] = True
    return images, masks, shadow


def model() -> nn.Sequential:
    """A fixed net whose 4 feature channels see brightness, darkness, redness and greenness."""
    conv = nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1, 1, 1], [-1, -1, -1], [1, -1, -1], [-1, 1, -1]], dtype=torch.float32)
                          .view(4, 3, 1, 1) / 3)
        conv.bias.copy_(torch.tensor([0.0, 1.0, 0.3, 0.3]))
    torch.manual_seed(0)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


@pytest.mark.parametrize("mode", ["roi", "resample"])
def test_shadow_failure_concept_ranked_first(mode: str):
    images, masks, shadow = planted()
    net = model().eval()
    with torch.no_grad():
        preds = net(images).argmax(1)
    # the model is right everywhere except on most shadowed images
    g = torch.Generator().manual_seed(1)
    wrong = shadow & (torch.rand(len(images), generator=g) < 0.8)
    targets = torch.where(wrong, (preds + 1) % 3, preds)
    cap = run_capture(net, "1", [(images, targets)], keep_images=True)
    assert torch.equal(~cap.correct, wrong)

    ps = sliding_windows(images, sizes=(8,), strides=(4,), concept_masks=masks, concept_names=("shadow", "blob"))
    emb = embed_patches(net, "1", images, ps, mode=mode)
    concepts = discover_concepts(emb, n_concepts=4, image_index=ps.image_index, seed=0)
    scores = torch.stack([c.scores for c in concepts])
    membership = concept_membership(scores, ps.image_index, len(images), top_k=20)
    ranking = rank_failures(~cap.correct, membership, names=[c.name for c in concepts], min_support=5)
    top = ranking[0]
    assert top.is_failure
    precision = concept_precision(concepts, ps, k=20)
    assert float(precision[top.concept, 0]) >= 0.8
    # the concept of bright, unshadowed patches exists and is not called a failure
    clean = [row for row in ranking if float(precision[row.concept, 0]) <= 0.1]
    assert clean and not any(row.is_failure for row in clean)
