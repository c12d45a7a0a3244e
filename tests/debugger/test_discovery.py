import numpy as np
import pytest
import torch

from debugger.discovery import ConceptDiscovery, concept_precision, dedup_rows, discover_concepts, select_k
from debugger.structures import Concept, PatchSet


def blobs(
    n_per: int = 40, centers=((0, 0, 0), (12, 0, 0), (0, 12, 0)), seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = torch.tensor(centers, dtype=torch.float32)
    x = torch.cat([torch.randn(n_per, c.shape[1], generator=g) + c[i] for i in range(len(c))])
    y = torch.arange(len(c)).repeat_interleave(n_per)
    return x, y


def test_kmeans_recovers_blobs_and_chooses_k():
    x, y = blobs()
    concepts = discover_concepts(x, k_range=(2, 6), outlier_mad=float("inf"))
    assert len(concepts) == 3
    for c in concepts:
        assert len(set(y[c.members].tolist())) == 1 and len(c.members) == 40
        assert c.scores.shape == (120,)
        assert c.name == f"cluster-{c.id}"
        assert 0.5 < c.coherence <= 1.0
        assert c.meta["method"] == "kmeans" and c.meta["k"] == 3
    assert [c.id for c in concepts] == [0, 1, 2]


def test_kmeans_scores_are_negative_distances_to_sklearn_centres():
    sklearn = pytest.importorskip("sklearn.cluster")
    x, _ = blobs()
    d = ConceptDiscovery(n_concepts=3, dedup_tol=None, outlier_mad=float("inf")).fit(x)
    ref = sklearn.KMeans(n_clusters=3, random_state=0, n_init=4).fit(x.numpy())
    centres = torch.from_numpy(ref.cluster_centers_).float()
    dist = torch.cdist(x, centres)
    for c in d.concepts_:
        j = c.meta["cluster"]
        torch.testing.assert_close(c.scores, -dist[:, j], atol=1e-4, rtol=1e-4)
    # membership equals sklearn's labels up to renumbering
    ours = d.labels_.numpy()
    theirs = ref.labels_
    for lab in np.unique(ours):
        assert len(np.unique(theirs[ours == lab])) == 1


def test_select_k_silhouette_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    cluster = pytest.importorskip("sklearn.cluster")
    x, _ = blobs()
    k, scores = select_k(x, (2, 4))
    assert k == 3 and set(scores) == {2, 3, 4}
    labels = cluster.KMeans(n_clusters=3, random_state=0, n_init=4).fit_predict(x.numpy())
    assert scores[3] == pytest.approx(metrics.silhouette_score(x.numpy(), labels), rel=1e-5)
    assert scores[3] > scores[2] and scores[3] > scores[4]


def test_nmf_on_parts_and_negative_error():
    g = torch.Generator().manual_seed(0)
    parts = torch.tensor([[5.0, 5, 0, 0, 0, 0], [0, 0, 5, 5, 0, 0], [0, 0, 0, 0, 5, 5]])
    which = torch.arange(3).repeat_interleave(30)
    x = parts[which] + 0.1 * torch.rand(90, 6, generator=g)
    concepts = discover_concepts(x, method="nmf", n_concepts=3, outlier_mad=float("inf"))
    assert sorted(len(c.members) for c in concepts) == [30, 30, 30]
    for c in concepts:
        assert len(set(which[c.members].tolist())) == 1
        assert float(c.scores[c.members].min()) > float(np.delete(c.scores.numpy(), c.members.numpy()).max())
    with pytest.raises(ValueError, match="non-negative embeddings for NMF"):
        discover_concepts(x - 1.0, method="nmf", n_concepts=2)


def test_dedup_rows_and_duplicates_share_assignments():
    reps, inv = dedup_rows(np.array([[0.0, 1.0], [0.0, 1.0], [5.0, 5.0], [0.0, 1.00001]], dtype=np.float32))
    assert reps.tolist() == [0, 2] and inv.tolist() == [0, 0, 1, 0]
    reps, inv = dedup_rows(np.array([[0.0, 1.0], [0.0, 1.00001]], dtype=np.float32), tol=0)
    assert reps.tolist() == [0, 1]
    x, y = blobs(20)
    xd = torch.cat([x, x[:5].repeat(50, 1)])  # 250 copies of 5 rows of cluster 0 would drag a centre
    d = ConceptDiscovery(n_concepts=3, outlier_mad=float("inf")).fit(xd)
    assert len(d.representatives_) == 60
    labels = d.labels_
    assert torch.equal(labels[60:], labels[:5].repeat(50))
    assert sorted(len(c.members) for c in d.concepts_) == [20, 20, 270]


def test_outliers_dropped_from_members_but_scored():
    x, _ = blobs(30, centers=((0, 0), (20, 0)))
    x = torch.cat([x, torch.tensor([[0.0, 9.0]])])  # nearest to cluster 0 but far from it
    concepts = discover_concepts(x, n_concepts=2, outlier_mad=3.0)
    owner = [c for c in concepts if bool((c.members < 30).any())][0]
    assert 60 not in owner.members.tolist()
    assert owner.scores.shape == (61,)
    kept_all = discover_concepts(x, n_concepts=2, outlier_mad=float("inf"))
    assert any(60 in c.members.tolist() for c in kept_all)


def test_small_and_single_image_clusters_dropped():
    x, _ = blobs(20, centers=((0, 0), (20, 0), (0, 20)))
    image_index = torch.cat([torch.arange(20), torch.arange(20), torch.zeros(20, dtype=torch.long)])
    d = ConceptDiscovery(n_concepts=3, min_images=2, outlier_mad=float("inf")).fit(x, image_index)
    assert d.n_concepts_ == 2 and d.k_ == 3
    assert (d.labels_[40:] == -1).all()
    assert all(c.meta["n_images"] == 20 for c in d.concepts_)
    assert d.scores_.shape == (60, 2)
    small = discover_concepts(x[:42], n_concepts=3, min_size=5, outlier_mad=float("inf"))
    assert len(small) == 2  # the third blob has only 2 rows


def test_transform_predict_and_patchset_image_index():
    x, y = blobs()
    ps = PatchSet(image_index=torch.arange(120), boxes=torch.zeros(120, 4, dtype=torch.long))
    d = ConceptDiscovery(k_range=(2, 5)).fit(x, ps)
    torch.testing.assert_close(d.transform(x), d.scores_)
    pred = d.predict(x)
    members = d.labels_ >= 0
    assert torch.equal(pred[members], d.labels_[members])
    with pytest.raises(ValueError, match="fitted"):
        ConceptDiscovery().transform(x)


def test_minibatch_path_and_reproducible():
    x, y = blobs(60)
    a = discover_concepts(x, n_concepts=3, minibatch_above=50, seed=3)
    b = discover_concepts(x, n_concepts=3, minibatch_above=50, seed=3)
    assert [c.members.tolist() for c in a] == [c.members.tolist() for c in b]
    for c in a:
        assert len(set(y[c.members].tolist())) == 1


def test_concept_precision():
    ps = PatchSet(torch.zeros(4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long),
                  concept_overlap=torch.tensor([[1.0, 0.0], [0.0, 0.2], [0.5, 0.0], [0.0, 0.0]]))
    c = Concept(0, "cluster-0", torch.tensor([0, 2]), torch.tensor([4.0, 1.0, 3.0, 2.0]))
    assert concept_precision([c], ps, k=2).tolist() == [[1.0, 0.0]]
    assert concept_precision([c], ps, k=4, min_overlap=0.1).tolist() == [[0.5, 0.25]]
    with pytest.raises(ValueError, match="concept_overlap"):
        concept_precision([c], PatchSet(torch.zeros(4, dtype=torch.long), torch.zeros(4, 4)))


def test_input_errors():
    with pytest.raises(ValueError, match="empty probe set"):
        discover_concepts(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="2-D"):
        discover_concepts(torch.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        discover_concepts(torch.tensor([[float("nan"), 1.0]] * 5))
    with pytest.raises(ValueError, match="Expected `method`"):
        discover_concepts(torch.rand(10, 2), method="dbscan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_index"):
        discover_concepts(torch.rand(10, 2), n_concepts=2, image_index=torch.zeros(3))
    with pytest.raises(ValueError, match="k_range"):
        discover_concepts(torch.rand(10, 2), k_range=(1, 3))
    with pytest.raises(ValueError, match="distinct embeddings"):
        discover_concepts(torch.ones(10, 2), n_concepts=2)
    with pytest.raises(ValueError, match="n_concepts"):
        discover_concepts(torch.rand(10, 2), n_concepts=0)


def _blobs(n=60, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(n // 3, d, generator=g) + 3 * i * torch.eye(d)[i] for i in range(3)])


def test_stored_kmeans_centres_score_like_sklearn_transform():
    from sklearn.cluster import KMeans

    x = _blobs()
    d = ConceptDiscovery(n_concepts=3, min_size=2, dedup_tol=None).fit(x)
    again = ConceptDiscovery.from_dict(d.to_dict())
    new = _blobs(seed=1)
    reference = KMeans(n_clusters=3, n_init=4, random_state=0).fit(x.numpy())
    # same fit (same seed and settings); sklearn's distances, columns in concept order
    dist = torch.from_numpy(reference.transform(new.numpy())).float()[:, d._kept]
    torch.testing.assert_close(again.transform(new), -dist, atol=1e-4, rtol=1e-4)
    assert torch.equal(again.predict(new), d.predict(new))


def test_stored_nmf_components_transform_like_the_fitted_model():
    x = _blobs()
    d = ConceptDiscovery(method="nmf", n_concepts=3, min_size=2).fit(x)
    state = d.to_dict()
    assert state["estimator"] == "NMF" and state["weights"].shape == (3, 6)
    torch.testing.assert_close(ConceptDiscovery.from_dict(state).transform(_blobs(seed=1)), d.transform(_blobs(seed=1)))


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"method": "pca", "weights": torch.zeros(2, 3)}, "Expected a stored `method` of 'kmeans' or 'nmf'"),
        ({"method": "kmeans", "weights": torch.zeros(3)}, r"Expected stored `weights` of shape \(k, D\)"),
        ({"method": "kmeans", "weights": torch.zeros(2, 3), "kept": [2]}, r"Expected stored `kept` clusters in \[0, 2"),
    ],
)
def test_from_dict_rejects_bad_state(state, match):
    with pytest.raises(ValueError, match=match):
        ConceptDiscovery.from_dict(state)


def test_transform_rejects_embeddings_of_another_dimension():
    d = ConceptDiscovery(n_concepts=2, min_size=2).fit(_blobs())
    with pytest.raises(ValueError, match="Expected embeddings of dimension 6 .* but got 4"):
        d.transform(torch.zeros(2, 4))
