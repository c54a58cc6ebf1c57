"""Report figures and self-contained HTML pages, on small 4 mm volumes."""

from __future__ import annotations

import base64
import re

import matplotlib
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from nipype_xai.metrics.group import summarize_methods
from nipype_xai.reports import (
    format_value,
    group_report,
    is_baseline,
    plot_attribution_panel,
    plot_glass_brains,
    plot_method_ranking,
    scale_abs,
    subject_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHAPE = (12, 14, 12)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
AFFINE[:3, 3] = [-22.0, -30.0, -20.0]
METHODS = ("gradient", "smoothgrad", "sobel")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A smooth 'T1w', a cubic ground truth and one map per method peaking near it."""
    root = tmp_path_factory.mktemp("images")
    grid = np.indices(SHAPE).astype(np.float32)
    centre = np.array(SHAPE, dtype=np.float32)[:, None, None, None] / 2
    radius = np.sqrt(((grid - centre) ** 2).sum(axis=0))
    t1w = np.clip(1.0 - radius / 7.0, 0, None) * 100
    gt = np.zeros(SHAPE, np.float32)
    gt[5:8, 6:9, 5:8] = 1
    rng = np.random.default_rng(0)
    paths = {"t1w": root / "sub-01_T1w.nii.gz", "gt": root / "sub-01_desc-lesion_mask.nii.gz"}
    nib.save(nib.Nifti1Image(t1w, AFFINE), paths["t1w"])
    nib.save(nib.Nifti1Image(gt, AFFINE), paths["gt"])
    maps = {}
    for i, method in enumerate(METHODS):
        data = (gt * (3 - i) + rng.normal(scale=0.3, size=SHAPE)).astype(np.float32)
        maps[method] = root / f"sub-01_desc-{method}_attribution.nii.gz"
        nib.save(nib.Nifti1Image(data, AFFINE), maps[method])
    paths["maps"] = maps
    return paths


def _check_figure(written, tmp_path, stem):
    assert set(written) == {"png", "svg"}
    assert written["png"] == (tmp_path / f"{stem}.png").absolute()
    assert written["png"].read_bytes().startswith(PNG_MAGIC)
    assert written["png"].stat().st_size > 5000
    svg = written["svg"].read_text()
    assert "<svg" in svg and svg.rstrip().endswith("</svg>")
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary file


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    """Figures are drawn outside pyplot: the global backend is unchanged, no figure is left open."""
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before
    assert matplotlib.get_backend() == backend


def test_scale_abs_divides_by_the_99th_percentile():
    data = np.zeros(SHAPE, np.float32)
    data.flat[:200] = -np.arange(1, 201)  # signed: |map| is scaled
    scaled, scale = scale_abs(nib.Nifti1Image(data, AFFINE))
    assert scale == pytest.approx(np.percentile(np.arange(1, 201), 99))
    values = np.asarray(scaled.dataobj)
    assert values.max() == 1.0 and values.min() == 0.0
    assert values.flat[99] == pytest.approx(100 / scale)
    zero, zero_scale = scale_abs(nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE))
    assert zero_scale == 0.0 and not np.asarray(zero.dataobj).any()


def test_plot_attribution_panel(images, tmp_path):
    written = plot_attribution_panel(
        images["maps"], images["t1w"], tmp_path / "sub-01_desc-attribution_panel",
        title="sub-01", ground_truth=images["gt"],
    )
    _check_figure(written, tmp_path, "sub-01_desc-attribution_panel")
    # A few axial cuts instead of ortho, and a threshold.
    written = plot_attribution_panel(
        {"gradient": nib.load(images["maps"]["gradient"])}, nib.load(images["t1w"]),
        tmp_path / "z", display_mode="z", threshold=0.5,
    )
    _check_figure(written, tmp_path, "z")


def test_plot_attribution_panel_names_a_bad_file(images, tmp_path):
    bad = tmp_path / "sub-01_desc-broken_attribution.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="sub-01_desc-broken_attribution.nii.gz"):
        plot_attribution_panel({"broken": bad}, images["t1w"], tmp_path / "panel")


def test_plot_glass_brains(images, tmp_path):
    written = plot_glass_brains(images["maps"], tmp_path / "desc-groupMean_glassbrain", title="mean")
    _check_figure(written, tmp_path, "desc-groupMean_glassbrain")


@pytest.fixture(scope="module")
def metrics_table():
    rng = np.random.default_rng(5)
    rows = []
    for s in range(1, 5):
        for i, method in enumerate((*METHODS, "gradient_random_model")):
            rows.append({
                "subject": f"{s:02d}", "method": method,
                "precision_at_k": round(0.9 - 0.2 * i + 0.05 * rng.random(), 6),
                "relevance_mass_accuracy": round(0.8 - 0.15 * i + 0.05 * rng.random(), 6),
                "auroc": round(0.95 - 0.1 * i + 0.02 * rng.random(), 6),
                "emd": round(4.0 + 3 * i + rng.random(), 6),
            })
    return pd.DataFrame(rows)


def test_plot_method_ranking(metrics_table, tmp_path):
    summary = summarize_methods(metrics_table, n_boot=200)
    written = plot_method_ranking(summary, "emd", tmp_path / "desc-ranking_metric-emd_plot")
    _check_figure(written, tmp_path, "desc-ranking_metric-emd_plot")
    with pytest.raises(ValueError, match="no 'dice'"):
        plot_method_ranking(summary, "dice", tmp_path / "x")
    assert is_baseline("sobel") and is_baseline("gradient_random_model")
    assert not is_baseline("gradient")


def _assert_self_contained(text):
    assert "http://" not in text and "https://" not in text
    assert 'src="file' not in text and "<link" not in text and "<script" not in text
    images = re.findall(r'<img[^>]*src="([^"]+)"', text)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    for src in images:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    return images


def test_subject_report_is_self_contained(images, metrics_table, tmp_path):
    predictions = tmp_path / "sub-01_desc-tinycnn_predictions.tsv"
    pd.DataFrame({"class": ["control", "lesion"], "probability": [0.125, 0.875],
                  "predicted": [False, True]}).to_csv(predictions, sep="\t", index=False)
    metrics = tmp_path / "sub-01_desc-overlap_metrics.tsv"
    table = metrics_table.loc[metrics_table["subject"] == "01"]
    table.to_csv(metrics, sep="\t", index=False)
    figures = tmp_path / "figures"

    out = subject_report(
        tmp_path / "sub-01.html", subject="sub-01", t1w=images["t1w"], maps=images["maps"],
        predictions_tsv=predictions, metrics_tsv=metrics, ground_truth=images["gt"],
        figures_dir=figures, errors=["occlusion: out of memory <on GPU>"],
    )
    assert out == (tmp_path / "sub-01.html").absolute()
    text = out.read_text()
    assert len(_assert_self_contained(text)) == 2  # the input and the panel
    for method in METHODS:
        assert method in text
    for value in table[["precision_at_k", "auroc", "emd"]].to_numpy().ravel():
        assert f">{format_value(value)}<" in text
    assert ">0.875<" in text and ">lesion<" in text
    assert "occlusion: out of memory &lt;on GPU&gt;" in text  # escaped
    # One value in every row (the subject, stays text: "01", not 1): said once, not a column.
    assert "<code>subject</code> = 01" in text and ">01<" not in text
    assert sorted(p.name for p in figures.iterdir()) == [
        "sub-01_desc-attribution_panel.png", "sub-01_desc-attribution_panel.svg",
        "sub-01_desc-input_T1w.png", "sub-01_desc-input_T1w.svg",
    ]


@pytest.mark.parametrize("outside", [True, False])
def test_subject_report_shows_the_input_domain_check(images, tmp_path, outside):
    predictions = tmp_path / "sub-01_desc-tinycnn_predictions.tsv"
    pd.DataFrame([{"control": 0.2, "lesion": 0.8, "predicted_label": "lesion",
                   "predicted_index": 1, "input_distance": 41.5 if outside else 1.25,
                   "input_distance_threshold": 7.5, "outside_training_inputs": outside,
                   "input_quantile_z": 12.0, "input_dissimilarity_z": 41.5,
                   "input_nonzero_fraction_z": -30.0}]).to_csv(predictions, sep="\t",
                                                               index=False)
    text = subject_report(tmp_path / "r.html", subject="01", t1w=images["t1w"], maps={},
                          predictions_tsv=predictions).read_text()
    assert "<h3>Input-domain check</h3>" in text and ">7.5<" in text
    warning = '<div class="warning"><strong>Input outside the model'
    if outside:
        # First thing on the page, and again by the prediction.
        assert text.count(warning) == 2
        assert text.index(warning) < text.index("<h2>Input</h2>")
        assert "distance 41.5, threshold 7.5" in text
    else:
        assert warning not in text and ">1.25<" in text


def test_subject_report_says_when_the_check_is_not_available(images, tmp_path):
    predictions = tmp_path / "p.tsv"
    pd.DataFrame([{"control": 0.2, "lesion": 0.8}]).to_csv(predictions, sep="\t", index=False)
    text = subject_report(tmp_path / "r.html", subject="01", t1w=images["t1w"], maps={},
                          predictions_tsv=predictions).read_text()
    assert "Not available: the model spec carries no summary of its training inputs" in text
    assert 'class="warning"' not in text


def test_subject_report_minimal(images, tmp_path):
    out = subject_report(tmp_path / "r.html", subject="02", t1w=nib.load(images["t1w"]), maps={})
    text = out.read_text()
    _assert_self_contained(text)
    assert "sub-02" in text and "No attribution map" in text


def test_subject_report_with_a_session_names_figures_by_both(images, tmp_path):
    subject_report(tmp_path / "r.html", subject="sub-03_ses-pre", t1w=images["t1w"],
                   maps={"gradient": images["maps"]["gradient"]}, figures_dir=tmp_path / "fig")
    assert sorted(p.name for p in (tmp_path / "fig").glob("*.png")) == [
        "sub-03_ses-pre_desc-attribution_panel.png", "sub-03_ses-pre_desc-input_T1w.png",
    ]


def test_group_report_is_self_contained(images, metrics_table, tmp_path):
    metrics = tmp_path / "desc-overlap_metrics.tsv"
    metrics_table.to_csv(metrics, sep="\t", index=False)
    summary = summarize_methods(metrics_table, n_boot=300)
    figures = tmp_path / "figures"
    failures = [("sub-07", "sub-07_T1w.nii.gz: truncated or corrupt image data"),
                ("sub-08", "no T1w found under anat/")]

    out = group_report(
        tmp_path / "group.html", metrics_tsv=metrics, summary=summary,
        mean_maps=images["maps"], background=images["t1w"], failures=failures,
        figures_dir=figures, provenance={"command": "nipype-xai bids out group"},
    )
    text = out.read_text()
    # 4 ranking plots (one per metric), the mean-map panel and the glass brains.
    assert len(_assert_self_contained(text)) == 6
    for method in (*METHODS, "gradient_random_model"):
        assert method in text
    for _, subject, reason in [(None, *f) for f in failures]:
        assert subject in text and reason in text
    for row in summary.itertuples():
        assert f"{format_value(row.mean)} [{format_value(row.ci_low)}, " \
               f"{format_value(row.ci_high)}]" in text
    assert "nipype-xai bids out group" in text and "nipype-xai version" in text
    # The required metrics come first, in this order.
    order = [text.index(f"<h3>{m}</h3>") for m in ("precision_at_k", "relevance_mass_accuracy",
                                                   "auroc", "emd")]
    assert order == sorted(order)
    names = sorted(p.name for p in figures.iterdir())
    assert "desc-ranking_metric-precisionAtK_plot.svg" in names
    assert "desc-ranking_metric-relevanceMassAccuracy_plot.png" in names
    assert {"desc-groupMean_panel.png", "desc-groupMean_glassbrain.svg"} <= set(names)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+\.(png|svg)", name) for name in names)


def test_group_report_summarises_the_tsv_when_no_summary(metrics_table, tmp_path):
    metrics = tmp_path / "desc-overlap_metrics.tsv"
    metrics_table.to_csv(metrics, sep="\t", index=False)
    # Failures may also come as the rows of a failures table.
    out = group_report(tmp_path / "group.html", metrics_tsv=metrics, summary=None, mean_maps={},
                       failures=[{"subject": "sub-09", "reason": "empty ground-truth mask"}])
    text = out.read_text()
    assert ">sub-09<" in text and ">empty ground-truth mask<" in text
    assert "1 failed subject." in text
    _assert_self_contained(text)
    expected = summarize_methods(metrics_table)
    row = expected.iloc[0]
    assert f"{format_value(row['mean'])} [{format_value(row['ci_low'])}" in text
    assert "4 subjects with metrics" in text



def test_group_report_names_subjects_outside_the_models_training_inputs(metrics_table, tmp_path):
    from nipype_xai.interfaces.reports import GroupReport, group_derivatives

    names = group_derivatives(methods=[], space="MNI152NLin2009aSym", res="4",
                              subjects=["01", "02"])
    outside = [("sub-02", "input distance 41.5 > threshold 7.5 <skull>")]
    text = group_report(tmp_path / "group.html", metrics_tsv=None, summary=None, mean_maps={},
                        derivatives=names, location="group.html",
                        outside_domain=outside).read_text()
    warning = "<strong>Inputs outside the model's training data.</strong>"
    assert text.count(warning) == 1
    assert "1 with an input outside the model&#x27;s training inputs" in text
    # The subject links to its report; the reason is escaped.
    assert '<li><a href="sub-02.html">sub-02</a>: input distance 41.5 &gt; threshold 7.5 ' \
           "&lt;skull&gt;</li>" in text
    quiet = group_report(tmp_path / "quiet.html", metrics_tsv=None, summary=None,
                         mean_maps={}).read_text()
    assert 'class="warning"' not in quiet and "training inputs" not in quiet

    # The interface passes the pairs through (as Nipype gives them: lists).
    metrics = tmp_path / "m.tsv"
    metrics_table.to_csv(metrics, sep="\t", index=False)
    node = GroupReport(metrics_tsv=str(metrics), subjects=["01", "02"],
                       outside_domain=[["sub-02", "input distance 41.5 > threshold 7.5"]])
    work = tmp_path / "node"
    work.mkdir()
    result = node.run(cwd=str(work))
    with open(result.outputs.out_report) as page_file:
        assert warning in page_file.read()

# ---- the pages name derivatives only, linked relatively ---------------------------------------


@pytest.fixture()
def work_files(images, tmp_path):
    """The inputs as a Nipype work directory names them: no derivative name anywhere."""
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    t1w = shutil.copy(images["t1w"], work / "sub-01_T1w_trans.nii.gz")
    maps = {m: shutil.copy(p, work / f"sub-01_T1w_trans_{m}.nii.gz")
            for m, p in images["maps"].items()}
    return {"t1w": t1w, "maps": maps}


def _hrefs(text):
    return re.findall(r'<a href="([^"]+)">', text)


def test_subject_report_links_derivatives_not_work_files(work_files, tmp_path):
    from nipype_xai.interfaces.reports import subject_derivatives

    names = subject_derivatives(subject="01", methods=list(METHODS), space="MNI152NLin2009aSym",
                                res="4", model_desc="tiny")
    text = subject_report(tmp_path / "sub-01.html", subject="01", t1w=work_files["t1w"],
                          maps=work_files["maps"], derivatives=names).read_text()
    assert "_trans" not in text  # no work file is named
    hrefs = _hrefs(text)
    assert "group.html" in hrefs
    assert ("sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-4_desc-preproc_T1w.nii.gz"
            in hrefs)
    for method in METHODS:
        desc = method  # single-word methods: the desc label is the name
        assert f"sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-4_desc-{desc}_attribution.nii.gz" \
            in hrefs
        assert f"sub-01/anat/sub-01_desc-{desc}_attribution.nii.gz" in hrefs

    # Links start where the page is: from a page one folder down, one level up.
    text = subject_report(tmp_path / "r.html", subject="01", t1w=work_files["t1w"],
                          maps=work_files["maps"], derivatives=names,
                          location="reports/sub-01.html").read_text()
    assert "../group.html" in _hrefs(text)
    assert all(h.startswith("../") for h in _hrefs(text))

    # No names given: no file named at all.
    text = subject_report(tmp_path / "bare.html", subject="01", t1w=work_files["t1w"],
                          maps=work_files["maps"]).read_text()
    assert "_trans" not in text and _hrefs(text) == []


def test_derivative_names_are_those_of_the_sinks():
    from nipype_xai.bids import derivative_path
    from nipype_xai.interfaces.reports import group_derivatives, subject_derivatives

    tpl = "MNI152NLin2009aSym"
    names = subject_derivatives(subject="01", session="2", methods=["smoothgrad_sq"], space=tpl,
                                res="4", model_desc="tiny", metrics=True, qc=True)
    entities = {"subject": "01", "session": "2"}
    assert names["maps"]["smoothgrad_sq"] == derivative_path(
        {**entities, "space": tpl, "res": "4", "desc": "smoothgradSq", "suffix": "attribution",
         "extension": ".nii.gz"}).as_posix()
    assert names["native_maps"]["smoothgrad_sq"] == (
        "sub-01/ses-2/anat/sub-01_ses-2_desc-smoothgradSq_attribution.nii.gz")
    assert names["predictions"] == "sub-01/ses-2/anat/sub-01_ses-2_desc-tiny_predictions.tsv"
    assert names["metrics"].endswith("sub-01_ses-2_desc-overlap_metrics.tsv")
    assert names["qc"].endswith("sub-01_ses-2_desc-registration_metrics.tsv")
    # Without the space (the workflow did not say), template-space files are not named.
    bare = subject_derivatives(subject="01", methods=["gradient"])
    assert "maps" not in bare and "t1w" not in bare and "predictions" not in bare

    group = group_derivatives(methods=["gradient"], space=tpl, res="4", metrics=True,
                              ranking=True, failures=True, subjects=["01", "sub-02_ses-1"])
    assert group["mean_maps"]["gradient"] == derivative_path(
        {"space": tpl, "res": "4", "desc": "gradientMean", "suffix": "attribution",
         "extension": ".nii.gz"}).as_posix()
    assert group["metrics"] == derivative_path(
        {"desc": "overlap", "suffix": "metrics", "extension": ".tsv"}).as_posix()
    assert group["ranking"] == derivative_path(
        {"desc": "overlap", "suffix": "ranking", "extension": ".tsv"}).as_posix()
    assert group["failures"] == "failures.tsv"
    assert group["participant_reports"] == {"sub-01": "sub-01.html",
                                            "sub-02_ses-1": "sub-02_ses-1.html"}


def test_group_report_links_participants_and_derivatives(images, metrics_table, tmp_path):
    from nipype_xai.interfaces.reports import group_derivatives

    work = tmp_path / "work"
    work.mkdir()
    metrics = work / "group_overlap_metrics.tsv"
    metrics_table.to_csv(metrics, sep="\t", index=False)
    names = group_derivatives(methods=list(images["maps"]), space="MNI152NLin2009aSym", res="4",
                              metrics=True, failures=True, subjects=["01", "02"])
    text = group_report(tmp_path / "group.html", metrics_tsv=metrics, summary=None,
                        mean_maps=images["maps"], background=images["t1w"],
                        failures=[("sub-03", "no T1w")], derivatives=names,
                        location="group.html").read_text()
    assert "group_overlap_metrics" not in text
    hrefs = _hrefs(text)
    assert {"sub-01.html", "sub-02.html", "failures.tsv", names["metrics"]} <= set(hrefs)
    assert names["mean_maps"]["gradient"] in hrefs


# ---- layout ------------------------------------------------------------------------------------


def test_subject_metrics_table_states_constant_columns_once(images, metrics_table, tmp_path):
    table = metrics_table.loc[metrics_table["subject"] == "01"].assign(
        dice_at_k=lambda t: t["precision_at_k"],
        emd_method="coarsened: score mass on 5x5x5, ground truth on 1x1x1 voxel blocks")
    path = tmp_path / "m.tsv"
    table.to_csv(path, sep="\t", index=False)
    text = subject_report(tmp_path / "r.html", subject="01", t1w=images["t1w"], maps={},
                          metrics_tsv=path).read_text()
    # The long text is stated once, not repeated in a column.
    assert text.count("coarsened: score mass") == 1
    assert "<th class=\"text\">emd_method</th>" not in text
    # dice_at_k equals precision_at_k in every row: one is shown, and the page says why.
    assert '<th class="num">dice_at_k</th>' not in text
    assert '<th class="num">precision_at_k</th>' in text
    assert "<code>dice_at_k</code> is not shown: it equals <code>precision_at_k</code>" in text
    # Only metrics on the page are named in the notes (no roi_rank).
    assert "roi_rank" not in text and "lower is better for emd, higher for the others" in text

    # Where they differ, both are shown.
    table.loc[table.index[0], "dice_at_k"] = 0.5
    table.to_csv(path, sep="\t", index=False)
    text = subject_report(tmp_path / "r2.html", subject="01", t1w=images["t1w"], maps={},
                          metrics_tsv=path).read_text()
    assert '<th class="num">dice_at_k</th>' in text and "is not shown" not in text


def test_group_ranking_is_one_tab_per_metric_without_javascript(metrics_table, tmp_path):
    table = metrics_table.assign(dice_at_k=metrics_table["precision_at_k"])
    metrics = tmp_path / "t.tsv"
    table.to_csv(metrics, sep="\t", index=False)
    text = group_report(tmp_path / "group.html", metrics_tsv=metrics, summary=None,
                        mean_maps={}).read_text()
    assert "<script" not in text
    tabs = re.findall(r'<input type="radio" name="ranking" id="ranking-(\w+)"( checked)?>', text)
    assert [t for t, _ in tabs] == ["precisionAtK", "relevanceMassAccuracy", "auroc", "emd"]
    assert [bool(c) for _, c in tabs] == [True, False, False, False]  # the first one open
    assert "dice_at_k" not in re.sub(r"<p class=\"note\"><code>dice_at_k</code>.*?</p>", "",
                                     text, flags=re.S)
    assert "roi_rank" not in text


def test_display_mask_blanks_the_box_outside_the_brain():
    from nipype_xai.reports.figures import _display_masked

    box = nib.Nifti1Image(np.ones(SHAPE, np.float32), AFFINE)
    brain = np.zeros((24, 28, 24), np.uint8)  # a 2 mm grid over the same field of view
    brain[6:18, 8:20, 6:18] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = AFFINE[:3, 3] - 1.0
    shown = np.asarray(_display_masked(box, nib.Nifti1Image(brain, affine)).dataobj)
    assert shown.shape == SHAPE
    assert shown[0, 0, 0] == 0 and shown[6, 7, 6] == 1  # the corner is out, the centre stays
    assert 0 < shown.sum() < shown.size


def test_sessions_are_labels_not_metrics(images, metrics_table, tmp_path):
    # BIDS identifier columns (participant_id, session_id) say whose row it is: never a metric to
    # bold, and the group page counts sessions apart from subjects.
    table = metrics_table.rename(columns={"subject": "participant_id"})
    table["participant_id"] = "sub-" + table["participant_id"]
    table = pd.concat([table.assign(session_id="ses-1"), table.assign(session_id="ses-2")])
    path = tmp_path / "desc-overlap_metrics.tsv"
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    one = table.loc[(table["participant_id"] == "sub-01") & (table["session_id"] == "ses-2")]
    one_path = tmp_path / "one.tsv"
    one.to_csv(one_path, sep="\t", index=False, na_rep="n/a")
    text = subject_report(tmp_path / "s.html", subject="sub-01_ses-2", t1w=images["t1w"],
                          maps={}, metrics_tsv=one_path).read_text()
    assert 'class="text best"' not in text and "ses-2" in text
    text = group_report(tmp_path / "g.html", metrics_tsv=path, summary=None, mean_maps={},
                        failures=[{"participant_id": "sub-09", "session_id": "ses-1",
                                   "reason": "empty ground-truth mask"}]).read_text()
    assert "4 subjects (8 sessions) with metrics" in text
    assert ">sub-09_ses-1<" in text and ">empty ground-truth mask<" in text
