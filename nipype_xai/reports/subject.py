"""One subject's self-contained HTML report (file names: :mod:`nipype_xai.reports.html`)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..metrics.group import LOWER_IS_BETTER
from ..tables import (
    DOMAIN_COLUMNS,
    IDENTIFIER_COLUMNS,
    outside_training_inputs,
    read_tsv,
)
from .figures import plot_anatomy, plot_attribution_panel
from .page import (
    SCALE_NOTE,
    FiguresDir,
    PathLike,
    constant_columns,
    constants_note,
    direction_note,
    embedded_png,
    error_list,
    escaped,
    figure_name,
    file_link,
    html_table,
    link,
    page,
    redundant_metrics,
    redundant_note,
    subject_prefix,
    write_page,
)

__all__ = ["DOMAIN_COLUMNS", "subject_report"]

#: Columns of a metrics table that say whose row it is, not a metric.
_LABEL_COLUMNS = (*IDENTIFIER_COLUMNS, "subject", "session", "method")


def _domain_warning(predictions: pd.DataFrame) -> Optional[str]:
    """The warning box for an input outside the model's training inputs, or None."""
    if outside_training_inputs(predictions) is None:
        return None
    row = predictions.iloc[0]
    return (
        '<div class="warning"><strong>Input outside the model\'s training data.</strong> '
        "This subject's input, as the model saw it, lies far from the inputs the model was "
        f"trained on (distance {escaped(row.get('input_distance'))}, threshold "
        f"{escaped(row.get('input_distance_threshold'))}). The prediction and every explanation on "
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
    out.append(html_table(predictions[columns]))
    out.append(
        '<p class="note">How far the input, as the model saw it, lies from the model\'s training '
        "inputs: z-scores against the training inputs' spread of the intensity quantiles (root "
        "mean square over the levels), of the dissimilarity (1 &minus; correlation) to their mean "
        "image and of the fraction of the model grid that is not 0; the distance is the largest. "
        "Above the threshold (a margin times the largest distance of a training input) the input "
        "is outside the training inputs.</p>"
    )
    return out


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
    sub = subject_prefix(subject)
    names = dict(derivatives or {})
    here = location or Path(out_html).name
    body: list[str] = []
    if names.get("group_report"):
        body.append(f'<nav class="links">{link(names["group_report"], here, "Group report")}'
                    "</nav>")
    predictions = read_tsv(predictions_tsv) if predictions_tsv is not None else None
    warning = _domain_warning(predictions) if predictions is not None else None
    if warning:
        body.append(warning)
    if errors:
        body.append("<h2>Errors</h2>\n" + error_list(list(errors)))
    with FiguresDir(figures_dir) as fig_dir:
        body.append("<h2>Input</h2>")
        if names.get("t1w"):
            body.append(f"<p>The T1w as the model received it: {file_link(names['t1w'], here)}"
                        "</p>")
        anat = plot_anatomy(t1w, fig_dir / figure_name(sub, "desc-input", "T1w"), title=f"{sub}: input")
        body.append(embedded_png(anat["png"], f"{sub} input T1w"))

        if qc_tsv is not None:
            body.append("<h2>Registration quality control</h2>")
            qc = read_tsv(qc_tsv)
            if "passed" in qc.columns and not bool(qc["passed"].astype(str).str.lower()
                                                   .isin(["true", "1"]).all()):
                body.append(error_list([f"registration QC failed: {qc['reasons'].iloc[0]}"
                                     if "reasons" in qc.columns else "registration QC failed"]))
            body.append(html_table(qc))
            if names.get("qc"):
                body.append(f'<p class="note">Table: {file_link(names["qc"], here)}</p>')
        if qc_figure is not None:
            body.append(embedded_png(qc_figure, f"{sub} registered brain with the template's outline"))
            import shutil

            name = figure_name(sub, "desc-registration", "overlay")
            shutil.copyfile(qc_figure, fig_dir / f"{name}.png")

        body.append("<h2>Prediction</h2>")
        if predictions is not None:
            body.append(html_table(predictions[[c for c in predictions.columns
                                            if c not in DOMAIN_COLUMNS]]))
            if names.get("predictions"):
                body.append(f'<p class="note">Table: {file_link(names["predictions"], here)}'
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
            note = SCALE_NOTE + outlined
            body.append(f'<p class="note">{html.escape(note)}</p>')
            panel = plot_attribution_panel(
                maps, background if background is not None else t1w,
                fig_dir / figure_name(sub, "desc-attribution", "panel"),
                title=f"{sub}: attribution maps", ground_truth=ground_truth,
            )
            body.append(embedded_png(panel["png"], f"{sub} attribution maps: {', '.join(maps)}"))
            body.append(_map_files(list(maps), names, here))
        else:
            body.append('<p class="note">No attribution map was produced.</p>')

        if metrics_tsv is not None:
            body.append("<h2>Overlap with the ground truth</h2>")
            table = read_tsv(metrics_tsv)
            redundant = redundant_metrics(table)
            table, constant = constant_columns(table.drop(columns=list(redundant)),
                                                keep=("method",))
            best = {c: c in LOWER_IS_BETTER for c in table.columns
                    if c not in _LABEL_COLUMNS}
            body.append(html_table(table, best=best,
                               baseline_column="method" if "method" in table.columns else None))
            body.append('<p class="note">Best value per metric in bold '
                        f"({direction_note(best)}); baselines in grey.</p>")
            body.append(constants_note(constant))
            body.append(redundant_note(redundant))
            if names.get("metrics"):
                body.append(f'<p class="note">Table: {file_link(names["metrics"], here)}</p>')
        return write_page(out_html, page(f"nipype-xai: {sub}", body))


def _map_files(methods: Sequence[str], names: Mapping[str, Any], here: str) -> str:
    """The maps' derivative files, one row per method (empty when none is named)."""
    template = dict(names.get("maps") or {})
    native = dict(names.get("native_maps") or {})
    if not template and not native:
        return ""
    rows = []
    for method in methods:
        rows.append(f'<tr><td class="text"><code>{html.escape(method)}</code></td>'
                    f'<td class="text">{file_link(template.get(method), here)}</td>'
                    f'<td class="text">{file_link(native.get(method), here)}</td></tr>')
    return ("<details><summary>Map files</summary><div class=\"table-wrap\"><table><thead><tr>"
            '<th class="text">method</th><th class="text">on the model grid (shown above)</th>'
            '<th class="text">on the T1w grid</th></tr></thead><tbody>' + "".join(rows)
            + "</tbody></table></div></details>")
