"""Group statistics: bootstrap CIs against a hand loop, method summaries and ranks, mean maps."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from nipype_xai.metrics.group import (
    LOWER_IS_BETTER,
    bootstrap_ci,
    bootstrap_indices,
    group_mean_maps,
    summarize_methods,
)


def _hand_bootstrap(values, *, n_boot, ci, seed):
    """Independent reference: resample positions, average the non-NaN values drawn, percentiles."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = []
    for row in indices:
        drawn = values[row]
        drawn = drawn[~np.isnan(drawn)]
        if drawn.size:
            means.append(drawn.sum() / drawn.size)
    low, high = np.percentile(means, [50 * (1 - ci), 50 * (1 + ci)])
    return np.nanmean(values), low, high


def test_bootstrap_ci_matches_hand_loop():
    values = [0.91, 0.42, 0.77, 0.15, 0.66, 0.58, 0.98, 0.31]
    got = bootstrap_ci(values, n_boot=500, ci=0.9, seed=7)
    assert got == pytest.approx(_hand_bootstrap(values, n_boot=500, ci=0.9, seed=7), abs=1e-12)
    assert got[0] == pytest.approx(np.mean(values))
    assert got[1] < got[0] < got[2]
    # Same seed, same answer; another seed, another interval.
    assert bootstrap_ci(values, n_boot=500, ci=0.9, seed=7) == got
    assert bootstrap_ci(values, n_boot=500, ci=0.9, seed=8) != got


def test_bootstrap_ci_nan_left_out_of_every_mean():
    values = [0.2, np.nan, 0.9, 0.4, np.nan, 0.7]
    got = bootstrap_ci(values, n_boot=300, seed=3)
    assert got == pytest.approx(_hand_bootstrap(values, n_boot=300, ci=0.95, seed=3), abs=1e-12)
    assert got[0] == pytest.approx(0.55)


def test_bootstrap_ci_edge_cases():
    assert all(np.isnan(bootstrap_ci([np.nan, np.nan])))
    assert all(np.isnan(bootstrap_ci([])))
    assert bootstrap_ci([np.nan, 0.3]) == pytest.approx((0.3, 0.3, 0.3))
    with pytest.raises(ValueError, match="infinite"):
        bootstrap_ci([1.0, np.inf])
    with pytest.raises(ValueError, match="ci"):
        bootstrap_ci([1.0, 2.0], ci=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)


@pytest.fixture
def table():
    """5 subjects x 3 methods; gradient is best on auroc and emd; one NaN; a text column."""
    auroc = {
        "gradient": [0.90, 0.85, 0.95, np.nan, 0.80],
        "sobel": [0.60, 0.65, 0.55, 0.70, 0.50],
        "random": [0.50, 0.52, 0.48, 0.49, 0.51],
    }
    emd = {
        "gradient": [5.0, 6.0, 4.0, 7.0, 5.5],
        "sobel": [12.0, 11.0, 13.0, 10.0, 12.5],
        "random": [20.0, 21.0, 19.0, 22.0, 20.5],
    }
    rows = [
        {"participant_id": f"sub-{s:02d}", "method": method, "auroc": auroc[method][s],
         "emd": emd[method][s], "score": "abs"}
        for method in auroc for s in range(5)
    ]
    return pd.DataFrame(rows)


def test_summarize_methods_columns_and_paired_bootstrap(table):
    summary = summarize_methods(table, n_boot=400, seed=11)
    assert list(summary.columns) == [
        "method", "metric", "mean", "sd", "ci_low", "ci_high", "n", "rank"
    ]
    assert set(summary["metric"]) == {"auroc", "emd"}  # the text column is ignored
    assert summary.attrs["ci"] == 0.95

    # Every method is resampled with the same subject indices (paired): recompute by hand on each
    # method's column aligned on the sorted subjects.
    subjects = sorted(table["participant_id"].unique())
    indices = bootstrap_indices(len(subjects), n_boot=400, seed=11)
    for row in summary.itertuples():
        values = (table.loc[table["method"] == row.method].set_index("participant_id")[row.metric]
                  .reindex(subjects).to_numpy())
        mean, low, high = _hand_bootstrap(values, n_boot=400, ci=0.95, seed=11)
        assert (row.mean, row.ci_low, row.ci_high) == pytest.approx((mean, low, high), abs=1e-12)
        assert row.n == int(np.isfinite(values).sum())
        assert row.sd == pytest.approx(np.nanstd(values, ddof=1))
        assert indices.shape == (400, 5)

    n = summary.set_index(["method", "metric"])["n"]
    assert n[("gradient", "auroc")] == 4 and n[("sobel", "auroc")] == 5


def test_summarize_methods_ranks_respect_lower_is_better(table):
    assert "emd" in LOWER_IS_BETTER and "auroc" not in LOWER_IS_BETTER
    rank = summarize_methods(table, n_boot=50).set_index(["metric", "method"])["rank"]
    assert [rank[("auroc", m)] for m in ("gradient", "sobel", "random")] == [1, 2, 3]
    # emd: gradient has the smallest distance, so it ranks first.
    assert [rank[("emd", m)] for m in ("gradient", "sobel", "random")] == [1, 2, 3]


def test_summarize_methods_row_order_does_not_matter(table):
    shuffled = table.sample(frac=1.0, random_state=0).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        summarize_methods(table, n_boot=200), summarize_methods(shuffled, n_boot=200)
    )


def test_summarize_methods_metrics_and_group_by(table):
    table = table.assign(model=["a"] * 10 + ["b"] * 5)
    summary = summarize_methods(table, metrics=["auroc"], group_by=("model", "method"), n_boot=50)
    assert list(summary.columns[:3]) == ["model", "method", "metric"]
    assert len(summary) == 3 and set(summary["metric"]) == {"auroc"}


def test_summarize_methods_reads_plain_subject_labels(table):
    # The derivatives' tables use participant_id (sub-01); a table of plain subject labels (the
    # benchmark's) is summarised the same way.
    plain = table.assign(subject=table["participant_id"].str.removeprefix("sub-")).drop(
        columns="participant_id")
    pd.testing.assert_frame_equal(summarize_methods(table, n_boot=100),
                                  summarize_methods(plain, n_boot=100))


def test_summarize_methods_errors(table):
    with pytest.raises(ValueError, match="more than one row"):
        summarize_methods(pd.concat([table, table.iloc[:1]]))
    with pytest.raises(ValueError, match="missing column.*participant_id or subject"):
        summarize_methods(table.drop(columns="participant_id"))
    with pytest.raises(ValueError, match="no column"):
        summarize_methods(table, metrics=["dice"])


# --------------------------------------------------------------------------------------------
# Group mean maps
# --------------------------------------------------------------------------------------------

AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
AFFINE[:3, 3] = [-24.0, -28.0, -24.0]


def _volumes(n, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(12, 14, 12)).astype(np.float32) for _ in range(n)]


def test_group_mean_maps_match_numpy(tmp_path):
    grad = _volumes(4, 0)
    images = []
    for i, data in enumerate(grad):
        path = tmp_path / f"sub-{i}_desc-gradient_attribution.nii.gz"
        nib.save(nib.Nifti1Image(data, AFFINE), path)
        images.append(nib.load(path))
    occl = _volumes(3, 1)
    out = group_mean_maps({
        "gradient": iter(images),  # an iterator is read once, one map at a time
        "occlusion": [nib.Nifti1Image(d, AFFINE) for d in occl],
    })
    for method, volumes in (("gradient", grad), ("occlusion", occl)):
        mean, sd = out[method]
        stack = np.stack(volumes).astype(np.float64)
        np.testing.assert_allclose(mean.get_fdata(), stack.mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(sd.get_fdata(), stack.std(axis=0, ddof=1), atol=1e-6)
        np.testing.assert_allclose(mean.affine, AFFINE)
        assert mean.get_data_dtype() == np.float32


def test_group_mean_maps_stream_in_constant_memory():
    # 60 subjects far from zero (where a naive sum of squares loses digits), read from a
    # generator: the result is numpy's to float32 rounding, and the peak memory is a few volumes,
    # not 60.
    shape = (24, 24, 24)
    volume_bytes = np.prod(shape) * 8

    def subjects(n):
        for seed in range(n):
            data = 1000.0 + np.random.default_rng(seed).normal(size=shape)
            yield nib.Nifti1Image(data.astype(np.float32), AFFINE)

    import tracemalloc

    tracemalloc.start()
    try:
        mean, sd = group_mean_maps({"gradient": subjects(60)})["gradient"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * volume_bytes  # a stack of the 60 subjects would be 60 volumes

    stack = np.stack([image.get_fdata() for image in subjects(60)])
    np.testing.assert_allclose(mean.get_fdata(), stack.mean(axis=0).astype(np.float32), rtol=1e-7)
    np.testing.assert_allclose(sd.get_fdata(), stack.std(axis=0, ddof=1).astype(np.float32),
                               rtol=1e-5)


def test_group_mean_maps_single_subject_has_zero_sd():
    (data,) = _volumes(1, 2)
    mean, sd = group_mean_maps({"gradient": [nib.Nifti1Image(data, AFFINE)]})["gradient"]
    np.testing.assert_allclose(mean.get_fdata(), data, atol=1e-6)
    assert not sd.get_fdata().any()


def test_group_mean_maps_grid_mismatch_names_the_file(tmp_path):
    a, b = _volumes(2, 3)
    good = tmp_path / "sub-01_desc-gradient_attribution.nii.gz"
    nib.save(nib.Nifti1Image(a, AFFINE), good)
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    bad = tmp_path / "sub-02_desc-gradient_attribution.nii.gz"
    nib.save(nib.Nifti1Image(b, shifted), bad)
    # Images read from files are named by their files (nibabel remembers them).
    with pytest.raises(ValueError, match="sub-02_desc-gradient_attribution.nii.gz: affine"):
        group_mean_maps({"gradient": [nib.load(good), nib.load(bad)]})

    small = tmp_path / "sub-03_desc-occlusion_attribution.nii.gz"
    nib.save(nib.Nifti1Image(b[:10], AFFINE), small)
    # The grid is shared across methods too.
    with pytest.raises(ValueError, match="sub-03_desc-occlusion_attribution.nii.gz: shape"):
        group_mean_maps({"gradient": [nib.load(good)], "occlusion": [nib.load(small)]})
    # In-memory images are named by method and position.
    with pytest.raises(ValueError, match=r"^occlusion\[0\]: shape"):
        group_mean_maps({"gradient": [nib.load(good)],
                         "occlusion": [nib.Nifti1Image(b[:10], AFFINE)]})
    with pytest.raises(ValueError, match="no maps"):
        group_mean_maps({"gradient": []})


def test_summarize_methods_counts_a_missing_cluster_as_one_of_its_own(table):
    """A cluster column with a missing value (a model without training seed) beside numbers: the
    rows without one form one cluster, "n/a", as a string cluster would (it once failed sorting
    a missing value beside strings)."""
    table = pd.concat([table.assign(seed=0), table.assign(seed=1), table.assign(seed=np.nan)],
                      ignore_index=True)
    labelled = table.assign(seed=table["seed"].map(lambda v: "n/a" if pd.isna(v) else str(v)))
    summary = summarize_methods(table, metrics=["auroc", "emd"], n_boot=200, seed=3,
                                cluster="seed")
    by_hand = summarize_methods(labelled, metrics=["auroc", "emd"], n_boot=200, seed=3,
                                cluster="seed")
    pd.testing.assert_frame_equal(summary, by_hand)
    assert set(summary["n"]) == {12, 15}  # gradient's auroc has one NaN per cluster
