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
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd

from .. import __version__
from ..atomic import atomic_write
from ..bids import method_to_desc
from ..metrics.group import LOWER_IS_BETTER, SUMMARY_COLUMNS, summarize_methods
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
    "figure_name",
    "format_value",
    "group_report",
    "subject_report",
]

PathLike = Union[str, os.PathLike]

#: Metrics plotted first on the group page, in this order; every other metric of the summary
#: follows in the summary's order.
RANKING_METRICS: tuple[str, ...] = ("precision_at_k", "relevance_mass_accuracy", "auroc")

# Rows of a per-subject table embedded in the group page before it is left to the TSV.
_MAX_TABLE_ROWS = 2000

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1150px; padding: 1em 2em 3em; color: #222; line-height: 1.45; }
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
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


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


_TEXT_COLUMNS = {"subject": str, "session": str, "participant_id": str, "method": str}


def _read_tsv(path: PathLike) -> pd.DataFrame:
    try:
        # Labels stay text: subject "01" must not become the number 1.
        return pd.read_csv(path, sep="\t", na_values=["n/a"], dtype=_TEXT_COLUMNS)
    except (OSError, ValueError) as error:
        raise ValueError(f"{Path(path).name}: cannot be read as a TSV table ({error})") from error


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
        metric is bold, baselines are grey.
    ground_truth
        Ground-truth mask in the maps' space, outlined on every map.
    qc_tsv, qc_figure
        Registration quality control: its one-row table (``passed`` and the metrics) and its
        overlay (the registered brain, the template brain's outline), shown after the input.
    figures_dir
        Where the PNG/SVG figures go (names in the module docstring). None: not kept.
    errors
        Problems to show at the top of the page (e.g. methods that failed).

    Returns
    -------
    pathlib.Path
        The absolute path of the page.
    """
    sub = _subject_prefix(subject)
    body: list[str] = []
    predictions = _read_tsv(predictions_tsv) if predictions_tsv is not None else None
    warning = _domain_warning(predictions) if predictions is not None else None
    if warning:
        body.append(warning)
    if errors:
        body.append("<h2>Errors</h2>\n" + _errors(list(errors)))
    with _FiguresDir(figures_dir) as fig_dir:
        body.append("<h2>Input</h2>")
        if isinstance(t1w, (str, os.PathLike)):
            body.append(f"<p><code>{html.escape(Path(t1w).name)}</code></p>")
        anat = plot_anatomy(t1w, fig_dir / figure_name(sub, "desc-input", "T1w"), title=f"{sub}: input")
        body.append(_img(anat["png"], f"{sub} input T1w"))

        if qc_tsv is not None:
            body.append("<h2>Registration quality control</h2>")
            qc = _read_tsv(qc_tsv)
            if "passed" in qc.columns and not bool(qc["passed"].astype(str).str.lower()
                                                   .isin(["true", "1"]).all()):
                body.append(_errors([f"registration QC failed: {qc['reasons'].iloc[0]}"
                                     if "reasons" in qc.columns else "registration QC failed"]))
            body.append(_table(qc))
        if qc_figure is not None:
            body.append(_img(qc_figure, f"{sub} registered brain with the template's outline"))
            import shutil

            name = figure_name(sub, "desc-registration", "overlay")
            shutil.copyfile(qc_figure, fig_dir / f"{name}.png")

        body.append("<h2>Prediction</h2>")
        if predictions is not None:
            body.append(_table(predictions[[c for c in predictions.columns
                                            if c not in DOMAIN_COLUMNS]]))
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
            files = "".join(
                f"<li><code>{html.escape(m)}</code>: <code>{html.escape(Path(p).name)}</code></li>"
                for m, p in maps.items() if isinstance(p, (str, os.PathLike))
            )
            if files:
                body.append(f"<details><summary>Map files</summary><ul>{files}</ul></details>")
        else:
            body.append('<p class="note">No attribution map was produced.</p>')

        if metrics_tsv is not None:
            body.append("<h2>Overlap with the ground truth</h2>")
            table = _read_tsv(metrics_tsv)
            best = {c: c in LOWER_IS_BETTER for c in table.columns
                    if c not in ("subject", "session", "method")}
            body.append(_table(table, best=best,
                               baseline_column="method" if "method" in table.columns else None))
            body.append('<p class="note">Best value per metric in bold (lower is better for '
                        f'{", ".join(sorted(LOWER_IS_BETTER))}; higher for the others); '
                        "baselines in grey.</p>")
        return _write(out_html, _page(f"nipype-xai: {sub}", body))


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

    Returns
    -------
    pathlib.Path
        The absolute path of the page.
    """
    table = _read_tsv(metrics_tsv) if metrics_tsv is not None else None
    if summary is None and table is not None and len(table):
        summary = summarize_methods(table)
    body: list[str] = []

    overview = []
    if table is not None and "subject" in table.columns:
        overview.append(f"{table['subject'].nunique()} subjects with metrics")
    if summary is not None and len(summary):
        group_columns = [c for c in summary.columns if c not in SUMMARY_COLUMNS]
        overview.append(f"{len(summary[group_columns].drop_duplicates())} methods")
    elif mean_maps:
        overview.append(f"{len(mean_maps)} methods")
    overview.append(f"{len(failures)} failed subject{'s' if len(failures) != 1 else ''}")
    body.append(f"<p>{html.escape(', '.join(overview))}.</p>")

    if failures:
        body.append("<h2>Failed subjects</h2>")
        frame = pd.DataFrame([_failure(item) for item in failures], columns=["subject", "reason"])
        body.append(f'<div class="errors">{_table(frame)}</div>')

    with _FiguresDir(figures_dir) as fig_dir:
        if summary is not None and len(summary):
            metrics = _ranking_order(list(dict.fromkeys(summary["metric"])))
            ci = summary.attrs.get("ci", 0.95)
            n_boot = summary.attrs.get("n_boot")
            body.append("<h2>Method ranking</h2>")
            replicates = f"{n_boot} replicates, " if n_boot else ""
            body.append(
                f'<p class="note">Mean over subjects with a {ci:.0%} percentile-bootstrap '
                f"confidence interval ({replicates}resampling subjects, the same resamples for "
                "every method); baselines in grey. Lower is better for "
                f"{', '.join(sorted(LOWER_IS_BETTER))}, higher for the others.</p>"
            )
            for metric in metrics:
                plot = plot_method_ranking(
                    summary, metric,
                    fig_dir / figure_name("desc-ranking", f"metric-{method_to_desc(metric)}", "plot"),
                )
                body.append(f"<h3>{html.escape(metric)}</h3>")
                body.append(_img(plot["png"], f"ranking of methods by {metric}"))

            body.append("<h2>Summary</h2>")
            body.append('<p class="note">mean [CI low, CI high]; methods ordered by '
                        f"{html.escape(metrics[0])}.</p>")
            wide = _wide_summary(summary, metrics)
            method_column = "method" if "method" in wide.columns else None
            body.append(_table(wide, baseline_column=method_column))
            body.append("<details><summary>All statistics (mean, sd, CI, n, rank)</summary>"
                        + _table(summary, baseline_column=method_column) + "</details>")

        if table is not None:
            name = html.escape(Path(metrics_tsv).name)
            if len(table) <= _MAX_TABLE_ROWS:
                body.append(f"<details><summary>Per-subject metrics (<code>{name}</code>)</summary>"
                            + _table(table, baseline_column="method" if "method" in table.columns
                                     else None)
                            + "</details>")
            else:
                body.append(f'<p class="note">Per-subject metrics: {len(table)} rows in '
                            f"<code>{name}</code>.</p>")

        if mean_maps:
            body.append("<h2>Group mean maps</h2>")
            methods = ", ".join(f"<code>{html.escape(m)}</code>" for m in mean_maps)
            body.append(f"<p>Methods: {methods}.</p>")
            body.append(f'<p class="note">{html.escape(_SCALE_NOTE)} The mean is of the signed '
                        "maps; its magnitude is shown.</p>")
            if background is None:
                from nilearn.datasets import load_mni152_template

                background = load_mni152_template(resolution=2)
            panel = plot_attribution_panel(
                mean_maps, background, fig_dir / figure_name("desc-groupMean", "panel"),
                title="Group mean maps",
            )
            body.append(_img(panel["png"], f"group mean maps: {', '.join(mean_maps)}"))
            glass = plot_glass_brains(
                mean_maps, fig_dir / figure_name("desc-groupMean", "glassbrain"),
                title="Group mean maps (glass brain)",
            )
            body.append(_img(glass["png"], f"group mean maps, glass brain: {', '.join(mean_maps)}"))

        body.append("<h2>Provenance</h2>")
        body.append(_table(_provenance(provenance)))
        return _write(out_html, _page("nipype-xai: group report", body))
