"""Self-contained HTML reports, one per subject and one for the group.

A page is one file: figures are embedded as base64 PNG, the stylesheet is inline, and nothing is
fetched (no CSS, JS, fonts or CDN), so a report can be mailed, archived or opened on an offline
cluster node. Every figure is also written as PNG and SVG under ``figures_dir`` (a temporary folder,
discarded, when none is given). Names (alphanumeric BIDS-like labels, ``-`` and ``_`` only):

==========================================================  ===========================================
``sub-<label>_desc-input_T1w.{png,svg}``                    the input T1w (subject page)
``sub-<label>_desc-attribution_panel.{png,svg}``            every method's map over the background
``desc-ranking_metric-<metricLabel>_plot.{png,svg}``        ranking with CIs, one per metric (group)
``desc-groupMean_panel.{png,svg}``                          group mean maps over the background
``desc-groupMean_glassbrain.{png,svg}``                     group mean maps, glass brains
==========================================================  ===========================================

``sub-<label>`` is ``sub-<label>_ses-<label>`` for a session; ``<metricLabel>`` is the metric's name in
lowerCamelCase (``precision_at_k`` -> ``precisionAtK``), as method names become ``desc`` labels
(:func:`nipype_xai.bids.method_to_desc`). Pages are written atomically.

A page names files only by relative links into the derivatives dataset it belongs to: the caller
gives the dataset-relative names of the derivatives (``derivatives``) and of the page itself
(``location``); the files the page was made from (in a Nipype work directory) are never named.
The pages use no JavaScript: the ranking charts are tabs made of radio buttons and CSS.
"""

from __future__ import annotations

import base64
import html
import json
import os
import posixpath
import re
import shlex
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import quote

import nibabel as nib
import numpy as np
import pandas as pd

from .. import __version__
from ..atomic import atomic_write
from ..bids import method_to_desc
from ..metrics.group import LOWER_IS_BETTER, SUMMARY_COLUMNS, summarize_methods
from ..tables import read_tsv
from .figures import (
    SCALE_PERCENTILE,
    is_baseline,
    plot_anatomy,
    plot_attribution_panel,
    plot_glass_brains,
    plot_method_ranking,
)

__all__ = [
    "DOMAIN_COLUMNS",
    "RANKING_METRICS",
    "REDUNDANT_METRICS",
    "figure_name",
    "format_value",
    "group_report",
    "redundant_metrics",
    "subject_report",
]

PathLike = Union[str, os.PathLike]

#: Metrics plotted first on the group page, in this order; every other metric of the summary
#: follows in the summary's order.
RANKING_METRICS: tuple[str, ...] = ("precision_at_k", "relevance_mass_accuracy", "auroc")

#: Metrics left out of a page when they equal another in every row, with the reason the page
#: gives (``{metric}`` and ``{same}`` are filled in).
REDUNDANT_METRICS: dict[str, tuple[str, str]] = {
    "dice_at_k": (
        "precision_at_k",
        "<code>{metric}</code> is not shown: it equals <code>{same}</code> in every row, as it "
        "must when k is the ground truth's voxel count. The top-k voxels and the ground truth "
        "then hold k voxels each, so Dice = 2&middot;hits / (k + k) = hits / k = precision at k.",
    ),
}

# Rows of a per-subject table embedded in the group page before it is left to the TSV.
_MAX_TABLE_ROWS = 2000

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1150px; padding: 1em 2em 3em; color: #222; line-height: 1.45; }
p code, li code, summary code { overflow-wrap: anywhere; }
nav.links { font-size: .92em; margin: -.4em 0 1em; }
nav.links a { margin-right: 1.2em; }
ul.files { font-size: .88em; padding-left: 1.2em; }
.table-wrap { max-width: 100%; overflow-x: auto; }
td.text { max-width: 24em; overflow-wrap: break-word; }
.tabs { display: flex; flex-wrap: wrap; margin: .6em 0 1em; }
.tabs > input { position: absolute; opacity: 0; pointer-events: none; }
.tabs > label { order: 0; padding: .3em .75em; margin: 0 .2em -1px 0; cursor: pointer;
                border: 1px solid #d6d6d6; border-radius: 4px 4px 0 0; background: #f2f4f7;
                font-size: .9em; }
.tabs > input:checked + label { background: #fff; border-bottom-color: #fff; font-weight: bold; }
.tabs > input:focus-visible + label { outline: 2px solid #1f77b4; }
.tabs > .panel { order: 1; width: 100%; display: none; border-top: 1px solid #d6d6d6;
                 padding-top: .5em; }
.tabs > input:checked + label + .panel { display: block; }
.tabs > .panel img { max-width: 760px; }
h1 { font-size: 1.6em; border-bottom: 2px solid #1f77b4; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; margin-bottom: .3em; }
p.meta, p.note { color: #666; font-size: .9em; }
table { border-collapse: collapse; font-size: .88em; margin: .5em 0 1em; }
th, td { border: 1px solid #d6d6d6; padding: .25em .6em; text-align: right; }
th { background: #f2f4f7; }
td.text, th.text { text-align: left; }
tr.baseline td { color: #777; }
td.best { font-weight: bold; }
img { max-width: 100%; height: auto; display: block; margin: .4em 0 1em; }
.errors { background: #fdecea; border-left: 4px solid #c62828; padding: .6em 1em; }
.errors li, .errors td { color: #8e1b1b; }
.warning { background: #fff4e5; border-left: 4px solid #e65100; padding: .6em 1em; color: #7a2e00; }
code { background: #f4f4f4; padding: 0 .25em; }
details summary { cursor: pointer; color: #1f77b4; }
"""


# --------------------------------------------------------------------------------------------
# Small HTML helpers
# --------------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """How a table cell is printed: floats with 4 significant digits, NaN as ``n/a``.

    >>> format_value(0.812345), format_value(12.3456), format_value(float("nan")), format_value(3)
    ('0.8123', '12.35', 'n/a', '3')
    """
    if value is None or value is pd.NA:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "n/a"
        return f"{float(value):.4g}"
    return str(value)


def figure_name(*parts: str) -> str:
    """Join ``key-value`` parts and a suffix into a file stem, checking every label is alphanumeric.

    >>> figure_name("sub-01", "desc-attribution", "panel")
    'sub-01_desc-attribution_panel'
    """
    for part in "_".join(parts).split("_"):
        for piece in part.split("-"):
            if not piece or not piece.isalnum():
                raise ValueError(f"figure name part {part!r}: labels must be alphanumeric")
    return "_".join(parts)


def _subject_prefix(subject: str) -> str:
    """``sub-<label>[_ses-<label>]`` from ``"01"``, ``"sub-01"`` or ``"sub-01_ses-02"``.

    Characters other than letters and digits are dropped from each label (BIDS labels are
    alphanumeric), so the result is always a valid file-name stem.
    """
    text = subject.removeprefix("sub-")
    label, _, session = text.partition("_ses-")
    label = re.sub(r"[^A-Za-z0-9]", "", label)
    session = re.sub(r"[^A-Za-z0-9]", "", session)
    if not label:
        raise ValueError(f"subject {subject!r}: no alphanumeric label")
    return f"sub-{label}" + (f"_ses-{session}" if session else "")


def _failure(item: Any) -> tuple[str, str]:
    # (subject, reason) pairs; rows of a failures table ({"subject": ..., "reason": ...}) too.
    if isinstance(item, Mapping):
        if "subject" in item and "reason" in item:
            return str(item["subject"]), str(item["reason"])
        values = list(item.values())
        if len(values) >= 2:
            return str(values[0]), " ".join(str(v) for v in values[1:])
        raise ValueError(f"failure {item!r}: expected a subject and a reason")
    subject, reason = item
    return str(subject), str(reason)


def _esc(value: Any) -> str:
    return html.escape(format_value(value), quote=True)


def _table(frame: pd.DataFrame, *, best: Optional[Mapping[str, bool]] = None,
           baseline_column: Optional[str] = None) -> str:
    """An HTML table; ``best`` maps a column to lower-is-better, whose best cell is bolded."""
    best = best or {}
    best_rows: dict[str, set] = {}
    for column, lower in best.items():
        if column in frame.columns and pd.api.types.is_numeric_dtype(frame[column]):
            values = frame[column].astype(float)
            if values.notna().any():
                target = values.min() if lower else values.max()
                best_rows[column] = set(frame.index[values == target])
    numeric = {c: pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns}
    head = "".join(
        f'<th class="{"num" if numeric[c] else "text"}">{html.escape(str(c))}</th>'
        for c in frame.columns
    )
    body = []
    for index, row in frame.iterrows():
        cells = []
        for column in frame.columns:
            classes = ["num" if numeric[column] else "text"]
            if index in best_rows.get(column, ()):
                classes.append("best")
            cells.append(f'<td class="{" ".join(classes)}">{_esc(row[column])}</td>')
        baseline = baseline_column is not None and is_baseline(str(row[baseline_column]))
        tr = '<tr class="baseline">' if baseline else "<tr>"
        body.append(tr + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _constant_columns(frame: pd.DataFrame, keep: Iterable[str] = ()) -> tuple[pd.DataFrame, dict]:
    """Columns with one value in every row, taken out of a table of several rows.

    A page states them once (``emd_method``'s long text in every row made the subject page wider
    than the window). Columns in ``keep`` stay.
    """
    if len(frame) < 2:
        return frame, {}
    constant = {}
    for column in frame.columns:
        if column in keep:
            continue
        values = frame[column]
        if values.isna().all() or (values.notna().all() and values.nunique() == 1):
            constant[column] = values.iloc[0]
    return frame.drop(columns=list(constant)), constant


def _constants_note(constant: Mapping[str, Any]) -> str:
    if not constant:
        return ""
    items = "; ".join(f"<code>{html.escape(str(k))}</code> = {_esc(v)}"
                      for k, v in constant.items())
    return f'<p class="note">The same in every row: {items}.</p>'


def redundant_metrics(table: Optional[pd.DataFrame]) -> dict[str, str]:
    """Metrics of :data:`REDUNDANT_METRICS` equal to their twin in every row: ``{metric: twin}``."""
    found = {}
    if table is None or not len(table):
        return found
    for metric, (twin, _) in REDUNDANT_METRICS.items():
        if metric in table.columns and twin in table.columns:
            a = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float)
            b = pd.to_numeric(table[twin], errors="coerce").to_numpy(dtype=float)
            if np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True):
                found[metric] = twin
    return found


def _redundant_note(redundant: Mapping[str, str]) -> str:
    return "".join(f'<p class="note">{REDUNDANT_METRICS[m][1].format(metric=m, same=twin)}</p>'
                   for m, twin in redundant.items())


def _direction_note(metrics: Iterable[str]) -> str:
    """Which of the metrics shown are better when lower (only those shown are named)."""
    lower = sorted(set(metrics) & LOWER_IS_BETTER)
    if not lower:
        return "higher is better for every metric"
    return f"lower is better for {', '.join(lower)}, higher for the others"


def _href(target: str, location: str) -> str:
    """``target`` (dataset-relative) as a link from the page at ``location`` (dataset-relative)."""
    start = posixpath.dirname(location) or "."
    relative = posixpath.relpath(posixpath.normpath(target), start)
    return html.escape(quote(relative, safe="/-_.~"), quote=True)


def _link(target: str, location: str, text: Optional[str] = None) -> str:
    label = html.escape(text if text is not None else posixpath.basename(target))
    return f'<a href="{_href(target, location)}">{label}</a>'


def _file_link(target: Optional[str], location: str) -> str:
    """A derivative's name as a link (in ``<code>``), or nothing when it has none."""
    if not target:
        return ""
    return f"<code>{_link(target, location)}</code>"


def _img(png: Path, alt: str) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,{data}">'


#: Columns of the input-domain check in a predictions TSV
#: (:meth:`nipype_xai.models.domain.InputDistance.as_row`); ``outside_training_inputs`` says whether
#: it warns.
DOMAIN_COLUMNS: tuple[str, ...] = (
    "input_distance", "input_distance_threshold", "outside_training_inputs", "input_quantile_z",
    "input_dissimilarity_z", "input_nonzero_fraction_z",
)


def _is_true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1")


def _domain_warning(predictions: pd.DataFrame) -> Optional[str]:
    """The warning box for an input outside the model's training inputs, or None."""
    if "outside_training_inputs" not in predictions.columns or not len(predictions):
        return None
    row = predictions.iloc[0]
    if not _is_true(row["outside_training_inputs"]):
        return None
    return (
        '<div class="warning"><strong>Input outside the model\'s training data.</strong> '
        "This subject's input, as the model saw it, lies far from the inputs the model was "
        f"trained on (distance {_esc(row.get('input_distance'))}, threshold "
        f"{_esc(row.get('input_distance_threshold'))}). The prediction and every explanation on "
        "this page are for an input unlike the model's training data: do not read them as what "
        "the model found in a brain like those it learnt from.</div>"
    )


def _domain_section(predictions: Optional[pd.DataFrame]) -> list[str]:
    """The input-domain check's figures, or a note that the check is not available."""
    out = ["<h3>Input-domain check</h3>"]
    if predictions is None or "input_distance" not in predictions.columns:
        out.append('<p class="note">Not available: the model spec carries no summary of its '
                   "training inputs.</p>")
        return out
    columns = [c for c in DOMAIN_COLUMNS if c in predictions.columns]
    out.append(_table(predictions[columns]))
    out.append(
        '<p class="note">How far the input, as the model saw it, lies from the model\'s training '
        "inputs: z-scores against the training inputs' spread of the intensity quantiles (root "
        "mean square over the levels), of the dissimilarity (1 &minus; correlation) to their mean "
        "image and of the fraction of the model grid that is not 0; the distance is the largest. "
        "Above the threshold (a margin times the largest distance of a training input) the input "
        "is outside the training inputs.</p>"
    )
    return out


def _errors(items: Sequence[str]) -> str:
    lis = "".join(f"<li>{html.escape(str(item))}</li>" for item in items)
    return f'<div class="errors"><ul>{lis}</ul></div>'


def report_time() -> str:
    """When a report was made (UTC, ISO 8601), the one timestamp in nipype-xai's outputs.

    ``SOURCE_DATE_EPOCH`` (the reproducible-builds convention) fixes it, so that two runs with the
    same ``--seed`` give byte-identical reports too.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    moment = (datetime.fromtimestamp(int(epoch), timezone.utc) if epoch.isdigit()
              else datetime.now(timezone.utc))
    return moment.isoformat(timespec="seconds")


def _page(title: str, body: Iterable[str]) -> str:
    generated = report_time()
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="meta">nipype-xai {html.escape(__version__)} &middot; generated {generated}</p>\n'
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _write(out_html: PathLike, text: str) -> Path:
    return atomic_write(out_html, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


class _FiguresDir:
    """``figures_dir`` or a temporary folder removed on exit."""

    def __init__(self, figures_dir: Optional[PathLike]):
        self._tmp = None if figures_dir is not None else tempfile.TemporaryDirectory(prefix="xai-fig-")
        self.path = Path(figures_dir if figures_dir is not None else self._tmp.name)

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


_SCALE_NOTE = (
    f"Each map is shown as |map| divided by its own {SCALE_PERCENTILE:g}th percentile of |map| "
    "over nonzero voxels and clipped to [0, 1], so every row shares one colour scale; values "
    "below the display threshold are transparent."
)


# --------------------------------------------------------------------------------------------
# Subject page
# --------------------------------------------------------------------------------------------


def subject_report(
    out_html: PathLike,
    *,
    subject: str,
    t1w: Any,
    maps: Mapping[str, PathLike],
    background: Any = None,
    predictions_tsv: Optional[PathLike] = None,
    metrics_tsv: Optional[PathLike] = None,
    ground_truth: Optional[PathLike] = None,
    qc_tsv: Optional[PathLike] = None,
    qc_figure: Optional[PathLike] = None,
    figures_dir: Optional[PathLike] = None,
    errors: Sequence[str] = (),
    derivatives: Optional[Mapping[str, Any]] = None,
    location: Optional[str] = None,
) -> Path:
    """Write one subject's self-contained HTML report.

    Parameters
    ----------
    out_html
        The page to write (e.g. ``sub-01.html`` at the derivatives root).
    subject
        Subject label, with or without ``sub-``; ``sub-01_ses-02`` for one session. Figure names
        and the title start with ``sub-<label>[_ses-<label>]``.
    t1w
        The input image (path or nibabel image), shown alone.
    maps
        Method name -> attribution map, in the space of ``background``.
    background
        Anatomy under the maps (the template T1w for template-space maps). None: ``t1w``.
    predictions_tsv
        The model's predictions for the subject (shown as a table). Its input-domain columns
        (:data:`DOMAIN_COLUMNS`), when present, are shown apart; when the input lies outside the
        model's training inputs, a warning opens the page and is repeated by the prediction.
    metrics_tsv
        The subject's ``desc-overlap_metrics.tsv`` (one row per method); the best value of each
        metric is bold, baselines are grey. Columns with one value in every row are stated once
        under the table, and a metric equal to its twin in every row
        (:data:`REDUNDANT_METRICS`) is left out, saying why.
    ground_truth
        Ground-truth mask in the maps' space, outlined on every map.
    qc_tsv, qc_figure
        Registration quality control: its one-row table (``passed`` and the metrics) and its
        overlay (the registered brain, the template brain's outline), shown after the input.
    figures_dir
        Where the PNG/SVG figures go (names in the module docstring). None: not kept.
    errors
        Problems to show at the top of the page (e.g. methods that failed).
    derivatives
        Dataset-relative names of the derivatives the page shows, linked from it: ``t1w`` (the
        model input), ``maps`` and ``native_maps`` (method -> map), ``predictions``, ``metrics``,
        ``qc``, and ``group_report``. A file without a name here is not named on the page: the
        inputs given above are work files, not derivatives.
    location
        The page's own dataset-relative name, which the links start from; default: the name of
        ``out_html`` at the dataset root.

    Returns
    -------
    pathlib.Path
        The absolute path of the page.
    """
    sub = _subject_prefix(subject)
    names = dict(derivatives or {})
    here = location or Path(out_html).name
    body: list[str] = []
    if names.get("group_report"):
        body.append(f'<nav class="links">{_link(names["group_report"], here, "Group report")}'
                    "</nav>")
    predictions = read_tsv(predictions_tsv) if predictions_tsv is not None else None
    warning = _domain_warning(predictions) if predictions is not None else None
    if warning:
        body.append(warning)
    if errors:
        body.append("<h2>Errors</h2>\n" + _errors(list(errors)))
    with _FiguresDir(figures_dir) as fig_dir:
        body.append("<h2>Input</h2>")
        if names.get("t1w"):
            body.append(f"<p>The T1w as the model received it: {_file_link(names['t1w'], here)}"
                        "</p>")
        anat = plot_anatomy(t1w, fig_dir / figure_name(sub, "desc-input", "T1w"), title=f"{sub}: input")
        body.append(_img(anat["png"], f"{sub} input T1w"))

        if qc_tsv is not None:
            body.append("<h2>Registration quality control</h2>")
            qc = read_tsv(qc_tsv)
            if "passed" in qc.columns and not bool(qc["passed"].astype(str).str.lower()
                                                   .isin(["true", "1"]).all()):
                body.append(_errors([f"registration QC failed: {qc['reasons'].iloc[0]}"
                                     if "reasons" in qc.columns else "registration QC failed"]))
            body.append(_table(qc))
            if names.get("qc"):
                body.append(f'<p class="note">Table: {_file_link(names["qc"], here)}</p>')
        if qc_figure is not None:
            body.append(_img(qc_figure, f"{sub} registered brain with the template's outline"))
            import shutil

            name = figure_name(sub, "desc-registration", "overlay")
            shutil.copyfile(qc_figure, fig_dir / f"{name}.png")

        body.append("<h2>Prediction</h2>")
        if predictions is not None:
            body.append(_table(predictions[[c for c in predictions.columns
                                            if c not in DOMAIN_COLUMNS]]))
            if names.get("predictions"):
                body.append(f'<p class="note">Table: {_file_link(names["predictions"], here)}'
                            "</p>")
            if warning:
                body.append(warning)
            body.extend(_domain_section(predictions))
        else:
            body.append('<p class="note">No prediction table.</p>')

        body.append("<h2>Attribution maps</h2>")
        if maps:
            methods = ", ".join(f"<code>{html.escape(m)}</code>" for m in maps)
            body.append(f"<p>Methods: {methods}.</p>")
            outlined = " The ground truth is outlined in cyan." if ground_truth is not None else ""
            note = _SCALE_NOTE + outlined
            body.append(f'<p class="note">{html.escape(note)}</p>')
            panel = plot_attribution_panel(
                maps, background if background is not None else t1w,
                fig_dir / figure_name(sub, "desc-attribution", "panel"),
                title=f"{sub}: attribution maps", ground_truth=ground_truth,
            )
            body.append(_img(panel["png"], f"{sub} attribution maps: {', '.join(maps)}"))
            body.append(_map_files(list(maps), names, here))
        else:
            body.append('<p class="note">No attribution map was produced.</p>')

        if metrics_tsv is not None:
            body.append("<h2>Overlap with the ground truth</h2>")
            table = read_tsv(metrics_tsv)
            redundant = redundant_metrics(table)
            table, constant = _constant_columns(table.drop(columns=list(redundant)),
                                                keep=("method",))
            best = {c: c in LOWER_IS_BETTER for c in table.columns
                    if c not in ("subject", "session", "participant_id", "method")}
            body.append(_table(table, best=best,
                               baseline_column="method" if "method" in table.columns else None))
            body.append('<p class="note">Best value per metric in bold '
                        f"({_direction_note(best)}); baselines in grey.</p>")
            body.append(_constants_note(constant))
            body.append(_redundant_note(redundant))
            if names.get("metrics"):
                body.append(f'<p class="note">Table: {_file_link(names["metrics"], here)}</p>')
        return _write(out_html, _page(f"nipype-xai: {sub}", body))


def _map_files(methods: Sequence[str], names: Mapping[str, Any], here: str) -> str:
    """The maps' derivative files, one row per method (empty when none is named)."""
    template = dict(names.get("maps") or {})
    native = dict(names.get("native_maps") or {})
    if not template and not native:
        return ""
    rows = []
    for method in methods:
        rows.append(f'<tr><td class="text"><code>{html.escape(method)}</code></td>'
                    f'<td class="text">{_file_link(template.get(method), here)}</td>'
                    f'<td class="text">{_file_link(native.get(method), here)}</td></tr>')
    return ("<details><summary>Map files</summary><div class=\"table-wrap\"><table><thead><tr>"
            '<th class="text">method</th><th class="text">on the model grid (shown above)</th>'
            '<th class="text">on the T1w grid</th></tr></thead><tbody>' + "".join(rows)
            + "</tbody></table></div></details>")


# --------------------------------------------------------------------------------------------
# Group page
# --------------------------------------------------------------------------------------------


def _ranking_order(metrics: Sequence[str]) -> list[str]:
    first = [m for m in RANKING_METRICS if m in metrics]
    return first + [m for m in metrics if m not in first]


def _wide_summary(summary: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Rows = methods, columns = metrics, cells ``mean [ci_low, ci_high]``; best first."""
    group_columns = [c for c in summary.columns if c not in SUMMARY_COLUMNS]
    cells = summary.assign(
        _cell=[
            f"{format_value(m)} [{format_value(lo)}, {format_value(hi)}]"
            for m, lo, hi in zip(summary["mean"], summary["ci_low"], summary["ci_high"])
        ]
    )
    wide = cells.pivot(index=group_columns, columns="metric", values="_cell")
    wide = wide[[m for m in metrics if m in wide.columns]]
    first = metrics[0]
    ranks = summary.loc[summary["metric"] == first].set_index(group_columns)["rank"]
    wide = wide.assign(_rank=ranks.reindex(wide.index).astype(float).to_numpy())
    wide = wide.sort_values("_rank", na_position="last", kind="stable").drop(columns="_rank")
    wide.columns.name = None
    return wide.reset_index()


def _provenance(provenance: Optional[Mapping[str, Any]]) -> pd.DataFrame:
    entries: dict[str, Any] = {
        "nipype-xai version": __version__,
        "command": " ".join(shlex.quote(arg) for arg in sys.argv),
        "date": report_time(),
    }
    entries.update(provenance or {})
    rows = [
        (str(key), value if isinstance(value, str) else json.dumps(value, default=str))
        for key, value in entries.items()
    ]
    return pd.DataFrame(rows, columns=["item", "value"])


def group_report(
    out_html: PathLike,
    *,
    metrics_tsv: Optional[PathLike],
    summary: Optional[pd.DataFrame],
    mean_maps: Mapping[str, PathLike],
    background: Any = None,
    failures: Sequence[tuple[str, str]] = (),
    figures_dir: Optional[PathLike] = None,
    provenance: Optional[Mapping[str, Any]] = None,
    brain_mask: Any = None,
    derivatives: Optional[Mapping[str, Any]] = None,
    location: Optional[str] = None,
) -> Path:
    """Write the group's self-contained HTML report.

    Parameters
    ----------
    out_html
        The page to write (e.g. ``group.html`` at the derivatives root).
    metrics_tsv
        The group ``desc-overlap_metrics.tsv`` (all subjects x methods); shown in a collapsible
        table, and summarised when ``summary`` is None.
    summary
        :func:`nipype_xai.metrics.group.summarize_methods` of that table. None: computed here from
        ``metrics_tsv`` with the defaults (2,000 replicates, 95 %, seed 0).
    mean_maps
        Method name -> group mean map (template space).
    background
        Anatomy under the mean maps. None: nilearn's packaged MNI152 (2009a symmetric) template.
    failures
        ``(subject, reason)`` for every subject that failed (or mappings with ``subject`` and
        ``reason`` keys, as the rows of a failures table); listed at the top.
    figures_dir
        Where the PNG/SVG figures go (names in the module docstring). None: not kept.
    provenance
        Extra items for the provenance table, which always holds the nipype-xai version, the
        command line (``sys.argv``) and the date; given items override those.
    brain_mask
        The template's brain mask: the mean maps are shown inside it (the files keep the whole
        grid). None: the background's nonzero voxels (a skull-stripped template is its brain),
        or nilearn's MNI152 brain mask without a background.
    derivatives
        Dataset-relative names, linked from the page: ``metrics`` (the group table),
        ``ranking``, ``mean_maps`` (method -> map), ``failures`` (the failures table) and
        ``participant_reports`` (``sub-X[_ses-Y]`` -> its report). Files without a name here are
        not named on the page.
    location
        The page's own dataset-relative name, which the links start from; default: the name of
        ``out_html`` at the dataset root.

    Returns
    -------
    pathlib.Path
        The absolute path of the page.
    """
    names = dict(derivatives or {})
    here = location or Path(out_html).name
    table = read_tsv(metrics_tsv) if metrics_tsv is not None else None
    if summary is None and table is not None and len(table):
        summary = summarize_methods(table)
    redundant = redundant_metrics(table)
    if summary is not None and table is None and "dice_at_k" in set(summary["metric"]):
        redundant = _redundant_in_summary(summary)
    body: list[str] = []

    overview = []
    subject_column = _subject_column(table)
    if subject_column:
        overview.append(f"{table[subject_column].nunique()} subjects with metrics")
    if summary is not None and len(summary):
        group_columns = [c for c in summary.columns if c not in SUMMARY_COLUMNS]
        overview.append(f"{len(summary[group_columns].drop_duplicates())} methods")
    elif mean_maps:
        overview.append(f"{len(mean_maps)} methods")
    overview.append(f"{len(failures)} failed subject{'s' if len(failures) != 1 else ''}")
    body.append(f"<p>{html.escape(', '.join(overview))}.</p>")

    reports = dict(names.get("participant_reports") or {})
    if reports:
        links = " ".join(_link(target, here, label) for label, target in reports.items())
        body.append(f'<nav class="links">Participant reports: {links}</nav>')

    if failures:
        body.append("<h2>Failed subjects</h2>")
        frame = pd.DataFrame([_failure(item) for item in failures], columns=["subject", "reason"])
        body.append(f'<div class="errors">{_table(frame)}</div>')
        if names.get("failures"):
            body.append(f'<p class="note">Table: {_file_link(names["failures"], here)}</p>')

    with _FiguresDir(figures_dir) as fig_dir:
        if summary is not None and len(summary):
            shown = summary.loc[~summary["metric"].isin(list(redundant))]
            metrics = _ranking_order(list(dict.fromkeys(shown["metric"])))
            ci = summary.attrs.get("ci", 0.95)
            n_boot = summary.attrs.get("n_boot")
            body.append("<h2>Method ranking</h2>")
            replicates = f"{n_boot} replicates, " if n_boot else ""
            body.append(
                f'<p class="note">Mean over subjects with a {ci:.0%} percentile-bootstrap '
                f"confidence interval ({replicates}resampling subjects, the same resamples for "
                f"every method); baselines in grey; {_direction_note(metrics)}. One tab per "
                "metric.</p>"
            )
            tabs = []
            for index, metric in enumerate(metrics):
                plot = plot_method_ranking(
                    summary, metric,
                    fig_dir / figure_name("desc-ranking", f"metric-{method_to_desc(metric)}", "plot"),
                )
                tab_id = f"ranking-{method_to_desc(metric)}"
                checked = " checked" if index == 0 else ""
                tabs.append(f'<input type="radio" name="ranking" id="{tab_id}"{checked}>'
                            f'<label for="{tab_id}">{html.escape(metric)}</label>'
                            f'<div class="panel"><h3>{html.escape(metric)}</h3>'
                            f'{_img(plot["png"], f"ranking of methods by {metric}")}</div>')
            body.append(f'<div class="tabs">{"".join(tabs)}</div>')
            body.append(_redundant_note(redundant))

            body.append("<h2>Summary</h2>")
            body.append('<p class="note">mean [CI low, CI high]; methods ordered by '
                        f"{html.escape(metrics[0])}.</p>")
            wide = _wide_summary(shown, metrics)
            method_column = "method" if "method" in wide.columns else None
            body.append(_table(wide, baseline_column=method_column))
            statistics = ("<details><summary>All statistics (mean, sd, CI, n, rank)</summary>"
                          + _table(shown, baseline_column=method_column))
            if names.get("ranking"):
                statistics += f'<p class="note">Table: {_file_link(names["ranking"], here)}</p>'
            body.append(statistics + "</details>")

        if table is not None:
            label = (_file_link(names["metrics"], here) if names.get("metrics")
                     else "the group table")
            if len(table) <= _MAX_TABLE_ROWS:
                per_subject, constant = _constant_columns(
                    table.drop(columns=list(redundant)),
                    keep=("method", subject_column or "subject"))
                body.append(f"<details><summary>Per-subject metrics ({label})</summary>"
                            + _table(per_subject, baseline_column="method"
                                     if "method" in per_subject.columns else None)
                            + _constants_note(constant) + "</details>")
            else:
                body.append(f'<p class="note">Per-subject metrics: {len(table)} rows in '
                            f"{label}.</p>")

        if mean_maps:
            body.append("<h2>Group mean maps</h2>")
            methods = ", ".join(f"<code>{html.escape(m)}</code>" for m in mean_maps)
            body.append(f"<p>Methods: {methods}.</p>")
            if background is None:
                from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

                background = load_mni152_template(resolution=2)
                if brain_mask is None:
                    brain_mask = load_mni152_brain_mask(resolution=2)
            if brain_mask is None:
                brain_mask = _nonzero_mask(background)
            body.append(f'<p class="note">{html.escape(_SCALE_NOTE)} The mean is of the signed '
                        "maps; its magnitude is shown, inside the template's brain mask (the "
                        "files hold the whole grid).</p>")
            panel = plot_attribution_panel(
                mean_maps, background, fig_dir / figure_name("desc-groupMean", "panel"),
                title="Group mean maps", display_mask=brain_mask,
            )
            body.append(_img(panel["png"], f"group mean maps: {', '.join(mean_maps)}"))
            glass = plot_glass_brains(
                mean_maps, fig_dir / figure_name("desc-groupMean", "glassbrain"),
                title="Group mean maps (glass brain)", display_mask=brain_mask,
            )
            body.append(_img(glass["png"], f"group mean maps, glass brain: {', '.join(mean_maps)}"))
            files = dict(names.get("mean_maps") or {})
            if files:
                items = "".join(f"<li><code>{html.escape(m)}</code>: "
                                f"{_file_link(files[m], here)}</li>" for m in mean_maps if m in files)
                body.append(f'<details><summary>Map files</summary><ul class="files">{items}'
                            "</ul></details>")

        body.append("<h2>Provenance</h2>")
        body.append(_table(_provenance(provenance)))
        return _write(out_html, _page("nipype-xai: group report", body))


def _subject_column(table: Optional[pd.DataFrame]) -> Optional[str]:
    """The column naming the subject: ``participant_id`` (``sub-01``) or ``subject`` (``01``)."""
    if table is None:
        return None
    return next((c for c in ("participant_id", "subject") if c in table.columns), None)


def _redundant_in_summary(summary: pd.DataFrame) -> dict[str, str]:
    """:func:`redundant_metrics` from a summary alone: equal means and CIs for every method."""
    found = {}
    group_columns = [c for c in summary.columns if c not in SUMMARY_COLUMNS]
    for metric, (twin, _) in REDUNDANT_METRICS.items():
        a = summary.loc[summary["metric"] == metric].set_index(group_columns)
        b = summary.loc[summary["metric"] == twin].set_index(group_columns)
        if len(a) and a.index.equals(b.index) and all(
                np.allclose(a[c].to_numpy(float), b[c].to_numpy(float), equal_nan=True)
                for c in ("mean", "ci_low", "ci_high")):
            found[metric] = twin
    return found


def _nonzero_mask(image: Any) -> nib.Nifti1Image:
    """A skull-stripped template's brain: its nonzero voxels."""
    if isinstance(image, (str, os.PathLike)):
        image = nib.load(str(image))
    data = np.asarray(image.dataobj)
    return nib.Nifti1Image((data > 0).astype(np.uint8), image.affine)
