"""The group's self-contained HTML report (file names: :mod:`nipype_xai.reports.html`)."""

from __future__ import annotations

import html
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import nibabel as nib
import numpy as np
import pandas as pd

from .. import __version__
from ..bids import method_to_desc
from ..metrics.group import SUMMARY_COLUMNS, summarize_methods
from ..tables import read_tsv
from .figures import (
    plot_attribution_panel,
    plot_glass_brains,
    plot_method_ranking,
)
from .page import (
    REDUNDANT_METRICS,
    SCALE_NOTE,
    FiguresDir,
    PathLike,
    constant_columns,
    constants_note,
    direction_note,
    embedded_png,
    failure_row,
    figure_name,
    file_link,
    format_value,
    html_table,
    link,
    page,
    redundant_metrics,
    redundant_note,
    report_time,
    write_page,
)

__all__ = ["RANKING_METRICS", "group_report"]

#: Metrics plotted first on the group page, in this order; every other metric of the summary
#: follows in the summary's order.
RANKING_METRICS: tuple[str, ...] = ("precision_at_k", "relevance_mass_accuracy", "auroc")


# Rows of a per-subject table embedded in the group page before it is left to the TSV.
_MAX_TABLE_ROWS = 2000


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
    outside_domain: Sequence[tuple[str, str]] = (),
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
    outside_domain
        ``(sub-X[_ses-Y], why)`` of the subjects whose input the model's input-domain check put
        outside its training inputs: named in a warning at the top (their maps are in the
        ranking and the means, as every subject's).

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
        sessions = ""
        if "session_id" in table.columns and table["session_id"].notna().any():
            n_sessions = len(table[[subject_column, "session_id"]].drop_duplicates())
            sessions = f" ({n_sessions} sessions)"
        overview.append(f"{table[subject_column].nunique()} subjects{sessions} with metrics")
    if summary is not None and len(summary):
        group_columns = [c for c in summary.columns if c not in SUMMARY_COLUMNS]
        overview.append(f"{len(summary[group_columns].drop_duplicates())} methods")
    elif mean_maps:
        overview.append(f"{len(mean_maps)} methods")
    overview.append(f"{len(failures)} failed subject{'s' if len(failures) != 1 else ''}")
    if outside_domain:
        overview.append(f"{len(outside_domain)} with an input outside the model's training "
                        "inputs")
    body.append(f"<p>{html.escape(', '.join(overview))}.</p>")
    if outside_domain:
        body.append(_outside_domain_warning(outside_domain, names.get("participant_reports"),
                                            here))

    reports = dict(names.get("participant_reports") or {})
    if reports:
        links = " ".join(link(target, here, label) for label, target in reports.items())
        body.append(f'<nav class="links">Participant reports: {links}</nav>')

    if failures:
        body.append("<h2>Failed subjects</h2>")
        frame = pd.DataFrame([failure_row(item) for item in failures], columns=["subject", "reason"])
        body.append(f'<div class="errors">{html_table(frame)}</div>')
        if names.get("failures"):
            body.append(f'<p class="note">Table: {file_link(names["failures"], here)}</p>')

    with FiguresDir(figures_dir) as fig_dir:
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
                f"every method); baselines in grey; {direction_note(metrics)}. One tab per "
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
                            f'{embedded_png(plot["png"], f"ranking of methods by {metric}")}</div>')
            body.append(f'<div class="tabs">{"".join(tabs)}</div>')
            body.append(redundant_note(redundant))

            body.append("<h2>Summary</h2>")
            body.append('<p class="note">mean [CI low, CI high]; methods ordered by '
                        f"{html.escape(metrics[0])}.</p>")
            wide = _wide_summary(shown, metrics)
            method_column = "method" if "method" in wide.columns else None
            body.append(html_table(wide, baseline_column=method_column))
            statistics = ("<details><summary>All statistics (mean, sd, CI, n, rank)</summary>"
                          + html_table(shown, baseline_column=method_column))
            if names.get("ranking"):
                statistics += f'<p class="note">Table: {file_link(names["ranking"], here)}</p>'
            body.append(statistics + "</details>")

        if table is not None:
            label = (file_link(names["metrics"], here) if names.get("metrics")
                     else "the group table")
            if len(table) <= _MAX_TABLE_ROWS:
                per_subject, constant = constant_columns(
                    table.drop(columns=list(redundant)),
                    keep=("method", subject_column or "subject"))
                body.append(f"<details><summary>Per-subject metrics ({label})</summary>"
                            + html_table(per_subject, baseline_column="method"
                                     if "method" in per_subject.columns else None)
                            + constants_note(constant) + "</details>")
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
            body.append(f'<p class="note">{html.escape(SCALE_NOTE)} The mean is of the signed '
                        "maps; its magnitude is shown, inside the template's brain mask (the "
                        "files hold the whole grid).</p>")
            panel = plot_attribution_panel(
                mean_maps, background, fig_dir / figure_name("desc-groupMean", "panel"),
                title="Group mean maps", display_mask=brain_mask,
            )
            body.append(embedded_png(panel["png"], f"group mean maps: {', '.join(mean_maps)}"))
            glass = plot_glass_brains(
                mean_maps, fig_dir / figure_name("desc-groupMean", "glassbrain"),
                title="Group mean maps (glass brain)", display_mask=brain_mask,
            )
            body.append(embedded_png(glass["png"], f"group mean maps, glass brain: {', '.join(mean_maps)}"))
            files = dict(names.get("mean_maps") or {})
            if files:
                items = "".join(f"<li><code>{html.escape(m)}</code>: "
                                f"{file_link(files[m], here)}</li>" for m in mean_maps if m in files)
                body.append(f'<details><summary>Map files</summary><ul class="files">{items}'
                            "</ul></details>")

        body.append("<h2>Provenance</h2>")
        body.append(html_table(_provenance(provenance)))
        return write_page(out_html, page("nipype-xai: group report", body))


def _outside_domain_warning(outside: Sequence[tuple[str, str]],
                            reports: Optional[Mapping[str, str]], here: str) -> str:
    """The warning box naming the subjects whose input lies outside the model's training inputs."""
    reports = dict(reports or {})
    items = "".join(
        f"<li>{link(reports[label], here, label) if label in reports else html.escape(label)}: "
        f"{html.escape(why)}</li>" for label, why in outside)
    n = len(outside)
    return (
        '<div class="warning"><strong>Inputs outside the model\'s training data.</strong> '
        f"The model's input-domain check found the input of {n} subject{'s' if n != 1 else ''} "
        "far from the inputs the model was trained on (for instance a head that still has its "
        "skull, or another contrast). Their predictions and maps are for inputs unlike the "
        "model's training data, and they are in the ranking and the group means below like "
        f"every other subject's.<ul>{items}</ul></div>"
    )


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
