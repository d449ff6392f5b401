"""Instance-dependent label noise: the part-dependent generator of Xia et al. 2020 ("Part-dependent
Label Noise: Towards Instance-dependent Label Noise", NeurIPS 2020), as the noisy-label
literature uses it for "IDN-τ".

For every labeled sample i of clean class y:

1. a flip rate q_i is drawn from N(τ, σ²) truncated to [0, 1] (σ = 0.1 by default);
2. the sample's features x_i are multiplied by a class-specific random matrix W_y (d × C,
   standard normal): p = x_i · W_y, one score per class;
3. the true class is excluded (p_y = −∞) and the other scores are turned into probabilities by a
   softmax, scaled by q_i; the true class keeps probability 1 − q_i;
4. the observed label is drawn from that distribution.

So the flip probability of sample i is exactly q_i (the expected noise rate is the mean of the
truncated normal: τ for τ ≥ 0.2 or so, a little more for smaller τ, where the truncation at 0
bites; τ = 0 means no noise at all), and where a flipped label goes depends on the image.

Features. The original draws x from the normalised, flattened images (3,072 values for CIFAR) and
holds a C × d × C tensor of weights. To stay feasible over millions of images and thousands of
classes, ltscale streams the labeled samples' images from the shards once, in shard order,
decodes each to a 16 × 16 RGB thumbnail (box filter; JPEGs decode at reduced scale), standardises
it per image (zero mean, unit variance over its 768 values) and multiplies it by a fixed random
projection (768 × 64, entries N(0, 1/768); the same for every dataset and seed, so a sample's
features depend on its image alone). Only the 64 projected values per sample are kept (256 bytes;
a million images take 256 MB), and W_y is drawn from the manifest seed one class at a time
(64 × C numbers), so memory never holds a C × d × C tensor. The flip rates, the draws and W all
come from the manifest seed; the manifest records the realised rate and the transition counts
like every other kind of noise.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ltscale.core.errors import DataError, ManifestError
from ltscale.data.index import ShardIndex
from ltscale.data.manifest_spec import NoiseSpec
from ltscale.data.pixels import to_mode
from ltscale.data.reader import IndexedReader

THUMBNAIL = 16          # side of the thumbnail the features come from
FEATURE_DIM = 64        # size of the random projection
_PROJECTION_SEED = 2020  # fixed: features depend on the image only
_CHUNK = 4096
FEATURES = (f"{THUMBNAIL}x{THUMBNAIL} RGB thumbnails, standardised per image, fixed random "
            f"projection to {FEATURE_DIM}")


def truncated_normal(rng: np.random.Generator, mean: float, std: float, n: int) -> np.ndarray:
    """n draws of N(mean, std²) restricted to [0, 1] (redrawing those that fall outside)."""
    out = rng.normal(mean, std, n)
    bad = np.flatnonzero((out < 0) | (out > 1))
    while len(bad):
        out[bad] = rng.normal(mean, std, len(bad))
        bad = bad[(out[bad] < 0) | (out[bad] > 1)]
    return out


def _thumbnail(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG: decode at a reduced scale
            small = to_mode(img, "RGB").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: the image cannot be decoded for instance-dependent noise "
                        f"({exc}); `ltscale data verify` the dataset") from None
    return np.asarray(small, dtype=np.float32).reshape(-1)


def projection() -> np.ndarray:
    d = THUMBNAIL * THUMBNAIL * 3
    rng = np.random.default_rng(_PROJECTION_SEED)
    return (rng.standard_normal((d, FEATURE_DIM)) / np.sqrt(d)).astype(np.float32)


def pixel_features(index: ShardIndex, ids: np.ndarray) -> np.ndarray:
    """(len(ids), FEATURE_DIM) float32 features of the images of ``ids``, read from the shards
    chunk by chunk (each chunk in shard order, merged reads)."""
    reader = IndexedReader(index)
    proj = projection()
    out = np.empty((len(ids), FEATURE_DIM), dtype=np.float32)
    try:
        for start in range(0, len(ids), _CHUNK):
            rows = ids[start:start + _CHUNK]
            pixels = np.empty((len(rows), proj.shape[0]), dtype=np.float32)
            for i, (row, data) in enumerate(zip(rows.tolist(), reader.read_many(rows))):
                if isinstance(data, Exception):
                    raise data
                pixels[i] = _thumbnail(data, reader.where(row))
            pixels -= pixels.mean(1, keepdims=True)
            pixels /= np.maximum(pixels.std(1, keepdims=True), 1e-6)
            out[start:start + len(rows)] = pixels @ proj
    finally:
        reader.close()
    return out


def class_weights(seed: int, y: int, num_classes: int) -> np.ndarray:
    """W_y: the (FEATURE_DIM, C) standard normal weights of clean class y."""
    return np.random.default_rng([seed, 7, y]).standard_normal((FEATURE_DIM, num_classes))


def flip_distribution(features: np.ndarray, y: int, q: np.ndarray, num_classes: int,
                      seed: int) -> np.ndarray:
    """P(observed label | sample) for samples of clean class ``y``: (n, C) rows summing to 1,
    1 − q_i on class y and q_i spread over the others by softmax(x_i · W_y)."""
    scores = features.astype(np.float64) @ class_weights(seed, y, num_classes)
    scores[:, y] = -np.inf
    scores -= scores.max(1, keepdims=True)
    p = np.exp(scores)
    p *= (q / p.sum(1))[:, None]
    p[:, y] += 1 - q
    return p


def instance_dependent_labels(index: ShardIndex, spec: NoiseSpec, seed: int, ids: np.ndarray,
                              clean: np.ndarray) -> tuple[np.ndarray, dict]:
    """Observed labels of ``ids`` (clean labels ``clean``) under part-dependent noise, and what
    the manifest records about it."""
    C = index.num_classes
    if C < 2:
        raise ManifestError("instance-dependent noise needs at least two classes")
    record = {"kind": "idn", "features": FEATURES, "mean_flip_probability": 0.0}
    observed = clean.copy()
    if spec.rate == 0 or not len(ids):
        return observed, record
    rng = np.random.default_rng([seed, 1])
    q = truncated_normal(rng, spec.rate, spec.std, len(ids))
    u = rng.random(len(ids))
    features = pixel_features(index, ids)
    for y in np.unique(clean).tolist():
        members = np.flatnonzero(clean == y)
        for start in range(0, len(members), _CHUNK):
            m = members[start:start + _CHUNK]
            cdf = np.cumsum(flip_distribution(features[m], y, q[m], C, seed), axis=1)
            observed[m] = np.minimum((cdf < u[m, None]).sum(1), C - 1)
    record["mean_flip_probability"] = float(q.mean())
    return observed, record
