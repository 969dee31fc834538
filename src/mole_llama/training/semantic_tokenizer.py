"""Fit a semantic tokenizer's k-means codebook on the speech of a `datasets` dataset."""

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from ..data.audio import decode_audio, without_audio_decoding
from ..modeling.configuration_semantic_units import SemanticUnitsConfig
from ..modeling.modeling_semantic_units import SemanticUnitsModel

logger = logging.get_logger(__name__)


def kmeans(points: torch.Tensor, num_clusters: int, iterations: int = 20, seed: int = 0, chunk: int = 16384):
    """Lloyd's k-means with k-means++ seeding (on a subsample), in chunks so memory stays bounded.

    Empty clusters are re-seeded at the points farthest from their centroid. Returns `(centroids, inertia)`.
    """
    if len(points) < num_clusters:
        raise ValueError(
            f"{len(points)} feature frames cannot make {num_clusters} units: give more audio or fewer units"
        )
    generator = torch.Generator().manual_seed(seed)
    centroids = _kmeans_plus_plus(points, num_clusters, generator)
    for _ in tqdm(range(iterations), desc="k-means", leave=False):
        assignment, distance = _nearest(points, centroids, chunk)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=num_clusters).to(points.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            centroids[empty] = points[distance.topk(int(empty.sum())).indices]
    _, distance = _nearest(points, centroids, chunk)
    return centroids, distance.mean().item()


def _nearest(points, centroids, chunk):
    assignments, distances = [], []
    squared_norms = centroids.pow(2).sum(-1)
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        distance = block.pow(2).sum(-1, keepdim=True) - 2 * block @ centroids.T + squared_norms
        best = distance.min(dim=-1)
        assignments.append(best.indices)
        distances.append(best.values.clamp(min=0))
    return torch.cat(assignments), torch.cat(distances)


def _kmeans_plus_plus(points, num_clusters, generator, sample_size=50_000):
    sample = points[torch.randperm(len(points), generator=generator)[:sample_size]]
    centroids = [sample[torch.randint(len(sample), (1,), generator=generator)].squeeze(0)]
    closest = (sample - centroids[0]).pow(2).sum(-1)
    for _ in range(1, num_clusters):
        index = torch.multinomial(closest / closest.sum(), 1, generator=generator)
        centroids.append(sample[index].squeeze(0))
        closest = torch.minimum(closest, (sample - centroids[-1]).pow(2).sum(-1))
    return torch.stack(centroids)


def fit_semantic_tokenizer(
    dataset,
    config: SemanticUnitsConfig | None = None,
    audio_column: str = "audio",
    max_frames: int = 300_000,
    iterations: int = 20,
    seed: int = 0,
    tokenizer: SemanticUnitsModel | None = None,
) -> SemanticUnitsModel:
    """Fit the units on the speech in `dataset[audio_column]` (any rate: resampled to the tokenizer's).

    Pass `tokenizer` to fit an existing one (e.g. `SemanticUnitsModel.from_ssl_model(hubert, 6, 4096)`),
    or a `config` for a new embedded (log-mel) one. At most `max_frames` frames are clustered (spread over the
    utterances in order); unreadable or too-short rows are skipped and counted in the log.
    """
    if tokenizer is None:
        tokenizer = SemanticUnitsModel(config or SemanticUnitsConfig())
    tokenizer.eval()
    dataset = without_audio_decoding(dataset, audio_column)
    rate = tokenizer.config.sampling_rate
    frames, total, skipped = [], 0, 0
    for row in tqdm(dataset, desc="semantic features"):
        try:
            waveform, _ = decode_audio(row[audio_column], rate)
            features = tokenizer.features(torch.from_numpy(waveform))[0]
        except ValueError as error:
            skipped += 1
            logger.warning(f"skipped a row: {error}")
            continue
        frames.append(features)
        total += len(features)
        if total >= max_frames:
            break
    if skipped:
        logger.warning(f"{skipped} rows skipped (unreadable, too short or not finite)")
    if not frames:
        raise ValueError("no usable audio in the dataset: check the audio column")
    points = torch.cat(frames)[:max_frames].float()
    centroids, inertia = kmeans(points, tokenizer.config.num_units, iterations, seed)
    logger.info(f"k-means on {len(points)} frames: mean squared distance to centroid {inertia:.3f}")
    with torch.no_grad():
        tokenizer.centroids.copy_(centroids)
    return tokenizer
