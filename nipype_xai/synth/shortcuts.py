"""Checks that a synthetic task cannot be solved by a shortcut the signal was not meant to offer.

The atrophy task changes the *shape* of one region and leaves intensities alone (Siegel et al.
2025 separate such "localized anatomical features" from intensity signals). If whole-brain
intensity histograms told the classes apart, a model could score well without looking at the
region, and attribution maps would rightly point elsewhere: a ground truth that the data do not
enforce. :func:`histogram_classifier_accuracy` measures that shortcut with cross-validated linear
classifiers on intensity histograms; near-chance balanced accuracy means it is not there.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import nibabel as nib
import numpy as np

__all__ = ["histogram_classifier_accuracy", "intensity_histograms"]

ImageLike = Union[np.ndarray, nib.spatialimages.SpatialImage]

CLASSIFIERS = ("logistic", "nearest_mean")


def _array(image: ImageLike) -> np.ndarray:
    if isinstance(image, nib.spatialimages.SpatialImage):
        return np.asarray(image.dataobj, dtype=np.float32)
    return np.asarray(image, dtype=np.float32)


def intensity_histograms(images: Sequence[ImageLike], masks: Optional[Sequence[ImageLike]] = None,
                         n_bins: int = 64, upper: float = 2.0) -> np.ndarray:
    """Normalised intensity histogram of each image inside its brain mask.

    Intensities are divided by their median inside the mask first, so the global intensity scale
    (which differs between subjects, as between scanners) is not a feature: what is left is the
    shape of the histogram, i.e. the tissue proportions and contrasts.

    Parameters
    ----------
    images
        3D arrays or images.
    masks
        One mask per image; by default the voxels above 20 % of the image's 98th percentile (the
        background of a skull-stripped magnitude image is noise well below that).
    n_bins, upper
        Bins over ``[0, upper]`` median units.

    Returns
    -------
    numpy.ndarray
        ``(n_images, n_bins)``; each row sums to 1 over the voxels inside the range.
    """
    rows = []
    for i, image in enumerate(images):
        data = _array(image)
        if masks is not None:
            mask = _array(masks[i]) > 0
        else:
            mask = data > 0.2 * np.percentile(data, 98)
        values = data[mask]
        if values.size == 0:
            raise ValueError(f"image {i}: empty mask")
        values = values / np.median(values)
        counts, _ = np.histogram(values, bins=n_bins, range=(0.0, upper))
        rows.append(counts / max(counts.sum(), 1))
    return np.asarray(rows, dtype=np.float64)


def histogram_classifier_accuracy(
    images: Sequence[ImageLike],
    labels: Sequence[int],
    masks: Optional[Sequence[ImageLike]] = None,
    *,
    classifier: str = "logistic",
    n_bins: int = 64,
    n_splits: int = 5,
    n_repeats: int = 10,
    seed: int = 0,
) -> float:
    """Cross-validated balanced accuracy of a classifier on whole-brain intensity histograms.

    Parameters
    ----------
    images, labels, masks
        The cohort's images, classes (0/1) and optional brain masks.
    classifier
        ``"logistic"``: L2-regularised logistic regression (C = 1) on standardised histogram bins;
        ``"nearest_mean"``: the closer class mean of standardised bins.
    n_bins
        Histogram bins (:func:`intensity_histograms`).
    n_splits, n_repeats, seed
        Repeated stratified k-fold cross-validation; the mean balanced accuracy over all folds
        is returned (repeats reduce the variance that small cohorts give a single split).

    Returns
    -------
    float
        Balanced accuracy; 0.5 is chance.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import RepeatedStratifiedKFold

    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; choose one of "
                         f"{', '.join(CLASSIFIERS)}")
    y = np.asarray(labels, dtype=int)
    if len(y) != len(images):
        raise ValueError(f"{len(images)} images but {len(y)} labels")
    n_splits = min(n_splits, int(np.bincount(y, minlength=2).min()))
    if n_splits < 2:
        raise ValueError("each class needs at least two subjects for cross-validation")
    features = intensity_histograms(images, masks, n_bins=n_bins)
    scores = []
    folds = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    for train, test in folds.split(features, y):
        mean = features[train].mean(axis=0)
        std = features[train].std(axis=0) + 1e-12
        train_x = (features[train] - mean) / std
        test_x = (features[test] - mean) / std
        if classifier == "logistic":
            model = LogisticRegression(C=1.0, max_iter=2000).fit(train_x, y[train])
            predicted = model.predict(test_x)
        else:
            centroids = np.stack([train_x[y[train] == k].mean(axis=0) for k in (0, 1)])
            distances = ((test_x[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
            predicted = distances.argmin(axis=1)
        scores.append(balanced_accuracy_score(y[test], predicted))
    return float(np.mean(scores))
