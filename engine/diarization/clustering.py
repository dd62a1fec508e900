"""Which windows share a voice: clustering of speaker embeddings, the count given or estimated.

Spectral clustering, as 3D-Speaker's and pyannote's pipelines do it: the cosine affinities of
all windows, each row pruned to its nearest neighbours (so that a few windows of one speaker
that resemble another do not bridge the two), made symmetric; the eigenvectors of its
Laplacian with the smallest eigenvalues place each speaker's windows near one point, and
k-means in that space gives the labels. The number of speakers, when not given, is where the
eigenvalues jump (the largest gap, within the asked range). Estimated counts are then checked
in the embeddings' own space: two clusters whose mean voices are closer than the encoder's
`merge_similarity` are one speaker, and a cluster of fewer than `MIN_CLUSTER_WINDOWS` windows
(a cough, a laugh, a burst of noise the detector let through) joins its nearest speaker.
Last, every window goes to the speaker whose mean voice it is closest to, twice over, which
mends the windows k-means put on the wrong side of a border.

Fewer than `MIN_SPECTRAL_WINDOWS` windows are too few for the eigenvalues to mean much; they
are clustered agglomeratively (average linkage, cut at the encoder's `window_similarity`: single
windows are less alike than mean voices), then checked the same way. On the benchmark's
windows, agglomerative clustering alone, cut at any one similarity, found the five speakers of
the meeting and the two of the exchange only in a narrow band (docs/benchmarks.md); spectral
clustering over a wide one.
"""

from __future__ import annotations

import numpy as np

NEIGHBOURS_SHARE = 0.05  # affinities kept per row: the nearest 5 % of the windows ...
MIN_NEIGHBOURS = 6  # ... and never fewer than this many
MIN_SPECTRAL_WINDOWS = 20
MIN_CLUSTER_WINDOWS = 3  # about 1.5 s of speech at a 0.5 s step: less is not a speaker of its own
REASSIGN_ROUNDS = 2
KMEANS_RESTARTS = 8


def cluster(
    embeddings: np.ndarray,
    fewest: int,
    most: int,
    merge_similarity: float,
    window_similarity: float,
    whole: np.ndarray | None = None,
) -> np.ndarray:
    """A label 0..k-1 per row of `embeddings` (unit rows), fewest <= k <= most where the rows allow.
    `merge_similarity` is the encoder's for mean voices, `window_similarity` for single windows.

    `whole` (a mask) marks the windows that heard a whole window's length of speech. Only they
    form speakers; the others (a region shorter than a window, its samples repeated) join the
    speaker they sound most like. Such an embedding is less sure of its voice (GE2E: 0.4-0.7
    against its own speaker's windows, where whole ones give 0.7-0.9), and, clustered with the
    rest, a 0.3 s cough could become a speaker of its own."""
    if whole is not None and int(whole.sum()) >= max(2, fewest) and not whole.all():
        labels = np.empty(len(embeddings), dtype=int)
        labels[whole] = cluster(embeddings[whole], fewest, most, merge_similarity, window_similarity)
        means = centroids(embeddings[whole], labels[whole])
        labels[~whole] = (embeddings[~whole] @ means.T).argmax(1)
        return labels
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=int)
    most = min(most, n)
    fewest = min(fewest, most)
    if n < MIN_SPECTRAL_WINDOWS or most == 1:
        labels = agglomerative(embeddings, fewest, most, window_similarity)
    else:
        labels = spectral(embeddings, fewest, most)
        if fewest < most:
            labels = absorb_small(embeddings, labels, fewest)
    if fewest < most:
        labels = merge_close(embeddings, labels, fewest, merge_similarity)
    return reassign(embeddings, labels)


def agglomerative(embeddings: np.ndarray, fewest: int, most: int, window_similarity: float) -> np.ndarray:
    """Average linkage, cut where the windows of two groups are less similar than `window_similarity`
    on average (or at the asked count)."""
    if len(embeddings) == 1:
        return np.zeros(1, dtype=int)
    from scipy.cluster.hierarchy import fcluster, linkage  # here: scipy.cluster costs 0.3 s at import

    tree = linkage(embeddings, method="average", metric="cosine")
    labels = fcluster(tree, t=1.0 - window_similarity, criterion="distance")
    count = len(set(labels))
    if not fewest <= count <= most:
        labels = fcluster(tree, t=min(max(count, fewest), most), criterion="maxclust")
    return _renumber(labels)


def spectral(embeddings: np.ndarray, fewest: int, most: int) -> np.ndarray:
    n = len(embeddings)
    affinity = embeddings @ embeddings.T
    keep = min(n - 1, max(MIN_NEIGHBOURS, int(round(NEIGHBOURS_SHARE * n))))
    pruned = np.zeros_like(affinity)
    nearest = np.argpartition(-affinity, keep, axis=1)[:, : keep + 1]  # + 1: a row's own entry is among them
    np.put_along_axis(pruned, nearest, np.take_along_axis(affinity, nearest, axis=1), axis=1)
    pruned = np.maximum(0.5 * (pruned + pruned.T), 0.0)
    np.fill_diagonal(pruned, 0.0)
    laplacian = np.diag(pruned.sum(axis=1)) - pruned
    values, vectors = np.linalg.eigh(laplacian)
    if fewest == most:
        k = fewest
    else:
        gaps = np.diff(values[fewest - 1 : most + 1])
        k = int(np.argmax(gaps)) + fewest
    return kmeans(vectors[:, :k], k)


def kmeans(points: np.ndarray, k: int, rounds: int = 50) -> np.ndarray:
    """Lloyd's k-means from k-means++ seeds, the best of a few seeded restarts: deterministic."""
    if k == 1:
        return np.zeros(len(points), dtype=int)
    rng = np.random.default_rng(0)
    best, best_cost = None, np.inf
    for _ in range(KMEANS_RESTARTS):
        centres = _plus_plus(points, k, rng)
        for _ in range(rounds):
            distances = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
            labels = distances.argmin(1)
            moved = np.array(
                [points[labels == c].mean(0) if np.any(labels == c) else centres[c] for c in range(k)]
            )
            if np.allclose(moved, centres):
                break
            centres = moved
        cost = float(distances.min(1).sum())
        if cost < best_cost:
            best, best_cost = labels, cost
    return _renumber(best)


def _plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        distances = np.min([((points - c) ** 2).sum(1) for c in centres], axis=0)
        total = distances.sum()
        index = rng.choice(len(points), p=distances / total) if total > 0 else rng.integers(len(points))
        centres.append(points[index])
    return np.array(centres)


def centroids(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The mean voice of each label, as unit rows (label order)."""
    means = np.array([embeddings[labels == c].mean(0) for c in range(labels.max() + 1)])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def merge_close(
    embeddings: np.ndarray, labels: np.ndarray, fewest: int, merge_similarity: float
) -> np.ndarray:
    """Join the two most similar speakers while their mean voices are closer than `merge_similarity`."""
    while labels.max() + 1 > fewest:
        similarity = centroids(embeddings, labels)
        similarity = similarity @ similarity.T
        np.fill_diagonal(similarity, -1.0)
        a, b = np.unravel_index(np.argmax(similarity), similarity.shape)
        if similarity[a, b] < merge_similarity:
            break
        labels = _renumber(np.where(labels == b, a, labels))
    return labels


def absorb_small(embeddings: np.ndarray, labels: np.ndarray, fewest: int) -> np.ndarray:
    """Give the windows of clusters too small to be a speaker to their nearest large one."""
    while labels.max() + 1 > fewest:
        sizes = np.bincount(labels)
        small = int(np.argmin(sizes))
        if sizes[small] >= MIN_CLUSTER_WINDOWS:
            break
        scores = embeddings[labels == small] @ centroids(embeddings, labels).T
        scores[:, small] = -np.inf
        labels = labels.copy()
        labels[labels == small] = scores.argmax(1)
        labels = _renumber(labels)
    return labels


def reassign(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each window to the nearest mean voice, `REASSIGN_ROUNDS` times (no speaker left empty)."""
    for _ in range(REASSIGN_ROUNDS):
        moved = (embeddings @ centroids(embeddings, labels).T).argmax(1)
        if len(set(moved)) < labels.max() + 1 or np.array_equal(moved, labels):
            break
        labels = moved
    return labels


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Labels 0..k-1 in order of first appearance."""
    _, first, inverse = np.unique(np.asarray(labels), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse.reshape(-1)]
