"""Figures and the HTML page of the validation benchmark.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot, as in
:mod:`nipype_xai.reports.figures`) and written as PNG + SVG; the page embeds the PNGs, so it is one
file that opens offline.

Every table and figure is of one ground-truth definition (the ``groundtruth`` column,
:data:`~nipype_xai.benchmark.settings.GROUNDTRUTHS`); the pages show them in that order, the exact
``signal`` first, each under a heading that says what it is
(:data:`~nipype_xai.benchmark.settings.GROUNDTRUTH_DESCRIPTIONS`).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import __version__
from ..atomic import atomic_write
from ..bids import method_to_desc
from ..metrics.group import LOWER_IS_BETTER, SUMMARY_COLUMNS
from ..reports import figure_name, format_value, is_baseline, plot_method_ranking
from ..reports.figures import save_figure
from ..reports.page import embedded_png, html_table
from .settings import GROUNDTRUTH_DESCRIPTIONS, GROUNDTRUTHS

__all__ = [
    "COMPARISON_METRICS",
    "HEADLINE_METRICS",
    "architecture_table",
    "ci_reading",
    "markdown_tables",
    "plot_architecture_comparison",
    "plot_sanity_check",
    "wide_table",
    "write_figures",
    "write_report",
]

PathLike = Union[str, os.PathLike]

#: The metrics of the headline tables and the ranking figures: one rank metric that asks "are the
#: top voxels in the target" (precision_at_k), one over the whole ranking (auroc), and the two mass
#: metrics (share inside the target; distance of the mass to it).
HEADLINE_METRICS = ("precision_at_k", "auroc", "relevance_mass_accuracy",
                    "relevance_mass_accuracy_siegel", "emd")

#: The metrics compared across architectures (when a run has more than one).
COMPARISON_METRICS = ("precision_at_k", "auroc")


def _groundtruth_parts(summary: pd.DataFrame):
    """``(groundtruth, rows)`` in the order of :data:`GROUNDTRUTHS` (unknown names last)."""
    names = sorted(dict.fromkeys(summary["groundtruth"]),
                   key=lambda g: GROUNDTRUTHS.index(g) if g in GROUNDTRUTHS else len(GROUNDTRUTHS))
    for name in names:
        yield name, summary[summary["groundtruth"] == name]


def _groundtruth_entity(groundtruth: str) -> list[str]:
    # The exact ground truth (the first definition) keeps the file names the figures always had;
    # another definition is named in them.
    return [] if groundtruth == GROUNDTRUTHS[0] else [f"groundtruth-{_label(groundtruth)}"]


def _groundtruth_heading(groundtruth: str) -> tuple[str, str]:
    """A definition's section heading and what it is, in words."""
    return (f"Ground truth: {groundtruth}",
            f"groundtruth = {groundtruth}: "
            f"{GROUNDTRUTH_DESCRIPTIONS.get(groundtruth, 'not described')}.")


def _correct_rows(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary["correct"].astype(str).str.lower().isin(("true", "1"))]


def architecture_table(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric per method (rows) and architecture (columns), correctly classified subjects.

    ``summary`` is one task, ground truth and class (``label``) of ``benchmark.tsv``. Cells are
    ``mean [ci_low, ci_high]``; the ``n`` row gives the subjects per architecture. Methods are
    ordered by their mean over the architectures (best first), so a method whose place depends on
    the model stands out.
    """
    rows = _correct_rows(summary)
    rows = rows[rows["metric"] == metric]
    architectures = list(dict.fromkeys(rows["architecture"]))
    order = (rows.groupby("method", sort=False)["mean"].mean()
             .sort_values(ascending=metric in LOWER_IS_BETTER, kind="stable"))
    table = []
    for method in order.index:
        row: dict[str, Any] = {"method": method}
        for name in architectures:
            cell = rows[(rows["method"] == method) & (rows["architecture"] == name)]
            row[name] = ("" if cell.empty else
                         f"{format_value(cell['mean'].iloc[0])} "
                         f"[{format_value(cell['ci_low'].iloc[0])}, "
                         f"{format_value(cell['ci_high'].iloc[0])}]")
        table.append(row)
    n = {"method": "n"}
    n.update({name: str(int(rows.loc[rows["architecture"] == name, "n"].max()))
              for name in architectures})
    table.append(n)
    return pd.DataFrame(table, columns=["method", *architectures])


def plot_architecture_comparison(summary: pd.DataFrame, metric: str, out_base: PathLike, *,
                                 title: Optional[str] = None) -> dict[str, Path]:
    """Mean and CI of one metric per method, one colour per architecture (correct subjects).

    ``summary`` is one task, ground truth and class of ``benchmark.tsv``; methods are ordered as in
    :func:`architecture_table`. Shows at a glance whether the verdict depends on the model.

    Returns
    -------
    dict
        ``{"png": Path, "svg": Path}``.
    """
    rows = _correct_rows(summary)
    rows = rows[rows["metric"] == metric]
    if rows.empty:
        raise ValueError(f"no correctly classified rows for {metric!r}")
    architectures = list(dict.fromkeys(rows["architecture"]))
    order = list(rows.groupby("method", sort=False)["mean"].mean()
                 .sort_values(ascending=metric in LOWER_IS_BETTER, kind="stable").index)
    figure = Figure(figsize=(7.5, 0.28 * len(order) + 1.4))
    axes = figure.add_subplot(1, 1, 1)
    step = 0.8 / max(len(architectures), 1)
    for j, name in enumerate(architectures):
        part = rows[rows["architecture"] == name].set_index("method")
        y, mean, low, high = [], [], [], []
        for i, method in enumerate(order):
            if method in part.index:
                y.append(i - 0.4 + step * (j + 0.5))
                mean.append(float(part.loc[method, "mean"]))
                low.append(float(part.loc[method, "ci_low"]))
                high.append(float(part.loc[method, "ci_high"]))
        mean_a = np.asarray(mean)
        axes.errorbar(mean_a, y, xerr=[mean_a - np.asarray(low), np.asarray(high) - mean_a],
                      fmt="o", markersize=3, capsize=0, linewidth=1, color=figure_color(j),
                      label=f"{name} (n = {int(part['n'].max())})")
    axes.set_yticks(range(len(order)))
    axes.set_yticklabels(order, fontsize=7)
    for tick, method in zip(axes.get_yticklabels(), order):
        if is_baseline(method):
            tick.set_color("#888888")
            tick.set_fontstyle("italic")
    axes.set_ylim(len(order) - 0.5, -0.5)
    axes.set_xlabel(f"{metric} (mean, {summary.attrs.get('ci', 0.95):.0%} bootstrap CI)")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    if title:
        axes.set_title(title, fontsize=9)
    return save_figure(figure, out_base, bbox_inches="tight")


def _label(text: Any) -> str:
    cleaned = "".join(ch for ch in str(text) if ch.isalnum())
    return cleaned or "model"


def plot_sanity_check(sanity: pd.DataFrame, out_base: PathLike, *,
                      title: Optional[str] = None) -> dict[str, Path]:
    """Spearman correlation with the trained model's map against the depth of randomisation.

    Parameters
    ----------
    sanity
        One model's rows of :func:`~nipype_xai.benchmark.summarize_sanity` (``method``,
        ``n_randomized``, ``layer``, ``spearman``, and ``ci_low`` / ``ci_high``, drawn as a band
        when present), or of :func:`~nipype_xai.benchmark.model_randomization_check`.
    out_base
        Output path without extension.
    title
        Figure title.

    Returns
    -------
    dict
        ``{"png": Path, "svg": Path}``.

    Notes
    -----
    A method that explains the model drops towards 0 as layers are randomised; one that stays
    high reproduces something the model does not need (often the input's edges) and fails the
    check (Adebayo et al. 2018). The point at 0 randomised layers is 1 by definition.
    """
    methods = list(dict.fromkeys(sanity["method"]))
    steps = sorted({int(s) for s in sanity["n_randomized"]})
    layer_of = dict(zip(sanity["n_randomized"].astype(int), sanity["layer"].astype(str)))
    figure = Figure(figsize=(9.5, 5.0))
    axes = figure.add_subplot(1, 1, 1)
    colors = [figure_color(i) for i in range(len(methods))]
    styles = ["-", "--", ":", "-."]
    for i, method in enumerate(methods):
        rows = sanity[sanity["method"] == method].sort_values("n_randomized")
        x = np.concatenate([[0], rows["n_randomized"].to_numpy(dtype=float)])
        y = np.concatenate([[1.0], rows["spearman"].to_numpy(dtype=float)])
        axes.plot(x, y, styles[(i // 10) % len(styles)], marker="o", markersize=3,
                  color=colors[i], label=method, linewidth=1.4)
        if {"ci_low", "ci_high"} <= set(rows.columns):
            axes.fill_between(x[1:], rows["ci_low"].to_numpy(dtype=float),
                              rows["ci_high"].to_numpy(dtype=float), color=colors[i],
                              alpha=0.12, linewidth=0)
    axes.axhline(0.0, color="#888888", linewidth=0.8)
    axes.set_xticks([0, *steps])
    axes.set_xticklabels(["trained", *[_short(layer_of[s]) for s in steps]], rotation=60,
                         ha="right", fontsize=7)
    axes.set_xlabel("randomised from the output down to layer (cascade)")
    axes.set_ylabel("Spearman rank correlation of |map| with the trained model's")
    # Room for anti-correlated maps too (a Spearman can reach -1): no line leaves the plot.
    low_column = "ci_low" if "ci_low" in sanity.columns else "spearman"
    lowest = np.nanmin(sanity[low_column].to_numpy(dtype=float)) if len(sanity) else 0.0
    axes.set_ylim(min(-0.3, float(lowest) - 0.05) if np.isfinite(lowest) else -0.3, 1.05)
    axes.grid(alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    if title:
        axes.set_title(title)
    return save_figure(figure, out_base, bbox_inches="tight")


def figure_color(i: int) -> tuple:
    """The i-th of 20 distinguishable colours (matplotlib's tab20, evens first)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return cmap(((2 * i) % 20 + (2 * i) // 20 % 2) / 20)


def _short(layer: str) -> str:
    # Deep module paths do not fit under an axis; the last two parts name a layer well enough.
    parts = layer.split(".")
    return ".".join(parts[-2:]) if len(parts) > 2 else layer


def write_figures(summary: pd.DataFrame, sanity: pd.DataFrame,
                  fig_dir: PathLike) -> dict[str, dict[str, Path]]:
    """Ranking figures per task x ground truth x architecture x class, and a sanity figure per
    model.

    The rankings are of the correctly classified subjects (the decisions a lab would act on; the
    incorrectly classified are in the tables), for :data:`HEADLINE_METRICS`. File names of the
    exact ``signal`` ground truth carry no ground-truth entity; the others carry
    ``groundtruth-<name>``.

    With more than one architecture, also one comparison figure per task x ground truth x class x
    :data:`COMPARISON_METRICS` (:func:`plot_architecture_comparison`).

    Returns
    -------
    dict
        ``"ranking/<task>/<groundtruth>/<architecture>/<label>/<metric>"``,
        ``"sanity/<task>/<architecture>"`` and ``"compare/<task>/<groundtruth>/<label>/<metric>"``
        -> ``{"png": Path, "svg": Path}``.
    """
    fig_dir = Path(fig_dir)
    figures: dict[str, dict[str, Path]] = {}
    for (task, gt, name), part in summary.groupby(["task", "groundtruth", "architecture"],
                                                  sort=False):
        for label, group in part.groupby("label", sort=False):
            correct = group["correct"].astype(bool)
            chosen, which = group[correct], "correctly classified"
            if chosen.empty:
                chosen, which = group[~correct], "incorrectly classified (none correct)"
            ranking = chosen[["method", *SUMMARY_COLUMNS]].reset_index(drop=True)
            ranking.attrs.update(summary.attrs)
            for metric in HEADLINE_METRICS:
                if metric not in set(ranking["metric"]):
                    continue
                base = fig_dir / figure_name(
                    f"task-{task}", *_groundtruth_entity(gt), f"model-{_label(name)}",
                    f"label-{_label(label)}", "desc-ranking",
                    f"metric-{method_to_desc(metric)}", "plot")
                figures[f"ranking/{task}/{gt}/{name}/{label}/{metric}"] = plot_method_ranking(
                    ranking, metric, base,
                    title=f"{task} / GT {gt} / {name} / {label} ({which}): {metric}")
    for (task, gt, label), part in summary.groupby(["task", "groundtruth", "label"], sort=False):
        if part["architecture"].nunique() < 2 or _correct_rows(part).empty:
            continue
        for metric in COMPARISON_METRICS:
            if metric not in set(_correct_rows(part)["metric"]):
                continue
            base = fig_dir / figure_name(f"task-{task}", *_groundtruth_entity(gt),
                                         f"label-{_label(label)}", "desc-architectures",
                                         f"metric-{method_to_desc(metric)}", "plot")
            figures[f"compare/{task}/{gt}/{label}/{metric}"] = plot_architecture_comparison(
                part, metric, base,
                title=f"{task} / GT {gt} / {label}, correctly classified: {metric} by "
                      "architecture")
    if len(sanity):
        for (task, name), part in sanity.groupby(["task", "architecture"], sort=False):
            base = fig_dir / figure_name(f"task-{task}", f"model-{_label(name)}", "desc-sanity",
                                         "plot")
            figures[f"sanity/{task}/{name}"] = plot_sanity_check(
                part, base, title=f"Cascading randomisation: {task} / {name}")
    return figures


def wide_table(summary: pd.DataFrame, metrics=HEADLINE_METRICS) -> pd.DataFrame:
    """``mean [ci_low, ci_high]`` per method (rows) and metric (columns), best first.

    ``summary`` is one group of subjects of ``benchmark.tsv`` (one task, ground truth,
    architecture, label and ``correct`` value). Rows are ordered by the first metric (lower first
    for :data:`~nipype_xai.metrics.group.LOWER_IS_BETTER`); ``n`` is the number of subjects.
    """
    metrics = [m for m in metrics if m in set(summary["metric"])]
    rows = {}
    for method, part in summary.groupby("method", sort=False):
        by_metric = part.set_index("metric")
        row: dict[str, Any] = {"method": method}
        for metric in metrics:
            if metric in by_metric.index:
                r = by_metric.loc[metric]
                row[metric] = (f"{format_value(r['mean'])} [{format_value(r['ci_low'])}, "
                               f"{format_value(r['ci_high'])}]")
                row[f"_{metric}"] = float(r["mean"])
        row["n"] = int(part["n"].max())
        rows[method] = row
    frame = pd.DataFrame(list(rows.values()))
    if metrics and len(frame):
        # Ties on the first metric (e.g. precision_at_k = 0 for many maps) go by the second.
        keys = metrics[:2]
        frame = frame.sort_values([f"_{m}" for m in keys],
                                  ascending=[m in LOWER_IS_BETTER for m in keys],
                                  na_position="last", kind="stable")
    return frame[["method", *metrics, "n"]].reset_index(drop=True)


def metric_header(metric: str) -> str:
    """A table's column header for ``metric``: its name, how it reads the map and which way is
    better, from :data:`~nipype_xai.metrics.overlap.METRIC_CONVENTIONS` (``score="abs"``, the
    benchmark's): ``relevance_mass_accuracy (max(a, 0); ↑)``. Other columns pass unchanged."""
    from ..metrics.overlap import METRIC_CONVENTIONS

    convention = METRIC_CONVENTIONS["abs"].get(metric)
    if convention is None:
        return metric
    reading = convention.split(";")[0].split(" (")[0]
    arrow = "↓" if metric in LOWER_IS_BETTER else "↑"
    return f"{metric} ({reading}; {arrow})"


def metric_legend(metrics: Sequence[str]) -> list[str]:
    """``metric: how it reads the map; what it measures; which direction is better`` per metric
    (:data:`~nipype_xai.metrics.overlap.METRIC_CONVENTIONS`, ``score="abs"``)."""
    from ..metrics.overlap import METRIC_CONVENTIONS

    return [f"{m}: {METRIC_CONVENTIONS['abs'][m]}" for m in metrics
            if m in METRIC_CONVENTIONS["abs"]]


def _overlap(a: Any, b: Any) -> bool:
    return bool(a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"])


def ci_reading(group: pd.DataFrame, metric: str) -> Optional[dict[str, Any]]:
    """What one column of a headline table shows under the confidence-interval overlap rule.

    ``group`` is one summarised group of subjects (as :func:`wide_table` takes); a difference is
    claimed only where two 95 % CIs do not overlap, and "no difference shown" otherwise (the rule
    of docs/benchmark.md: conservative for these paired CIs, never the other way). Returns None
    when no method (other than baselines) has the metric.

    Returns
    -------
    dict
        ``best``: the method with the best mean (direction from
        :data:`~nipype_xai.metrics.group.LOWER_IS_BETTER`); ``tied``: the other methods whose CI
        overlaps the best's (no difference shown); ``baseline``: the best baseline
        (:func:`~nipype_xai.reports.is_baseline`; None without one); ``above``, ``level``,
        ``below``: the methods whose CI lies wholly on the better side of that baseline's, overlaps
        it, or lies wholly on the worse side. Methods are in the order of their means, best first;
        ``rows`` maps every method and baseline to its summary row.
    """
    rows = group.loc[group["metric"] == metric].dropna(subset=["mean", "ci_low", "ci_high"])
    lower = metric in LOWER_IS_BETTER
    rows = rows.sort_values("mean", ascending=lower, kind="stable")
    baselines = rows.loc[rows["method"].map(is_baseline)]
    methods = rows.loc[~rows["method"].map(is_baseline)]
    if methods.empty:
        return None
    by_name = {str(r["method"]): r for _, r in rows.iterrows()}
    best = methods.iloc[0]
    others = [r for _, r in methods.iloc[1:].iterrows()]
    reading: dict[str, Any] = {
        "metric": metric, "lower_is_better": lower, "best": str(best["method"]),
        "tied": [str(r["method"]) for r in others if _overlap(r, best)],
        "baseline": None, "above": [], "level": [], "below": [], "rows": by_name,
    }
    if len(baselines):
        baseline = baselines.iloc[0]
        reading["baseline"] = str(baseline["method"])
        for _, r in methods.iterrows():
            if _overlap(r, baseline):
                side = "level"
            else:
                better = r["ci_high"] < baseline["ci_low"] if lower else \
                    r["ci_low"] > baseline["ci_high"]
                side = "above" if better else "below"
            reading[side].append(str(r["method"]))
    return reading


def _value(row: Any) -> str:
    return (f"{format_value(row['mean'])} [{format_value(row['ci_low'])}, "
            f"{format_value(row['ci_high'])}]")


def _names(methods: Sequence[str]) -> str:
    return ", ".join(f"`{m}`" for m in methods) if methods else "none"


def reading_lines(group: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """One Markdown bullet per metric: :func:`ci_reading` in words, for the table above it."""
    lines = []
    for metric in metrics:
        reading = ci_reading(group, metric)
        if reading is None:
            continue
        rows = reading["rows"]
        arrow = "↓" if reading["lower_is_better"] else "↑"
        text = (f"- **{metric}** ({arrow}): best `{reading['best']}` "
                f"{_value(rows[reading['best']])}; no difference shown from it: "
                f"{_names(reading['tied'])}.")
        if reading["baseline"] is not None:
            n = len(reading["above"]) + len(reading["level"]) + len(reading["below"])
            text += (f" Best baseline *{reading['baseline']}* {_value(rows[reading['baseline']])}:"
                     f" better than it {len(reading['above'])} of {n}; no difference shown from "
                     f"it: {_names(reading['level'])}; worse: {_names(reading['below'])}.")
        lines.append(text)
    return lines


def _sizes(group: pd.DataFrame) -> str:
    """``n = 52 (52 subjects x 3 seeds, 156 cells)``-style size of one summarised group."""
    cells = int(group["n"].max()) if len(group) else 0
    if "n_subjects" not in group.columns or group["n_subjects"].isna().all():
        return f"n = {cells}"
    subjects, seeds = int(group["n_subjects"].max()), int(group["n_seeds"].max())
    if seeds <= 1:
        return f"n = {subjects}"
    return f"n = {subjects} subjects x {seeds} training seeds ({cells} cells)"


def _cell(text: Any) -> str:
    """A Markdown table cell: a ``|`` inside it (``|a|``) is escaped, not a column break."""
    return str(text).replace("|", "\\|")


def _markdown_table(table: pd.DataFrame, columns: list[str]) -> list[str]:
    headers = [_cell(metric_header(c)) for c in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in table.iterrows():
        method = str(row["method"])
        shown = f"*{method}*" if is_baseline(method) else method
        lines.append("| " + " | ".join([shown, *[_cell(row[c]) for c in columns[1:]]]) + " |")
    return [*lines, ""]


def markdown_tables(summary: pd.DataFrame, metrics=HEADLINE_METRICS) -> str:
    """The headline tables as Markdown, one section per ground-truth definition (the exact
    ``signal`` first, its heading saying what it is): a table per task x architecture x class x
    correct, preceded (with several architectures) by :func:`architecture_table` per task x class.

    Each row is a method, each cell ``mean [ci_low, ci_high]`` (:func:`wide_table`); baselines
    are in italics. Written next to ``benchmark.tsv`` as ``benchmark.md`` for documentation.
    """
    lines = []
    shown = [m for m in metrics if m in set(summary["metric"])]
    for gt, rows in _groundtruth_parts(summary):
        heading, description = _groundtruth_heading(gt)
        lines += [f"## {heading}", "", description, "",
                  "Each cell: mean [95 % CI]; the intervals resample subjects and training seeds. "
                  "Metrics (how each reads the map a; what it measures; direction):", "",
                  *[f"- {line}" for line in metric_legend(shown)], ""]
        for (task, label), part in rows.groupby(["task", "label"], sort=False):
            if part["architecture"].nunique() < 2 or _correct_rows(part).empty:
                continue
            for metric in COMPARISON_METRICS:
                table = architecture_table(part, metric)
                if len(table) <= 1:
                    continue
                lines += [f"### {task} / GT {gt} / {label}, correctly classified: {metric} by "
                          "architecture", ""]
                lines += _markdown_table(table, list(table.columns))
        for (task, name, label, correct), group in rows.groupby(
                ["task", "architecture", "label", "correct"], sort=False):
            wide = wide_table(group, metrics)
            which = "correctly" if bool(correct) else "incorrectly"
            lines += [f"### {task} / GT {gt} / {name} / {label}, {which} classified "
                      f"({_sizes(group)})", ""]
            lines += _markdown_table(
                wide, ["method", *[c for c in wide.columns if c not in ("method", "n")]])
            reading = reading_lines(group, shown)
            if reading:
                lines += ["What this table shows (a difference only where the 95 % CIs do not "
                          "overlap):", "", *reading, ""]
    return "\n".join(lines)


def _table(frame: pd.DataFrame, method_column: Optional[str] = "method") -> str:
    """A table of the page; rows of a baseline in grey when ``method_column`` names them."""
    column = method_column if method_column in frame.columns else None
    return html_table(frame, baseline_column=column)


def _img(paths: Mapping[str, Path], alt: str) -> str:
    return embedded_png(paths["png"], alt)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left}
th{background:#f2f2f2} tr.baseline td{color:#777;font-style:italic}
img{max-width:100%;margin:.5em 0} .note{color:#555;font-size:.9em}
details{margin:1em 0}
"""


def _groundtruth_sections(gt: str, summary: pd.DataFrame,
                          figures: Mapping[str, Mapping[str, Path]]) -> list[str]:
    """The page's tables and figures of one ground-truth definition (``summary``'s rows of it)."""
    shown = [m for m in HEADLINE_METRICS if m in set(summary["metric"])]
    body = ['<p class="note">Metrics (how each reads the map a; what it measures; direction): '
            + "; ".join(html.escape(line) for line in metric_legend(shown)) + ".</p>"]
    for (task, label), part in summary.groupby(["task", "label"], sort=False):
        keys = [f"compare/{task}/{gt}/{label}/{metric}" for metric in COMPARISON_METRICS]
        if not any(key in figures for key in keys):
            continue
        body.append(f"<h3>{html.escape(str(task))} / GT {html.escape(gt)} / "
                    f"{html.escape(str(label))}: how much the verdict depends on the model</h3>")
        for metric, key in zip(COMPARISON_METRICS, keys):
            if key in figures:
                body.append(_table(architecture_table(part, metric)))
                body.append(_img(figures[key], f"{task} {gt} {label}: {metric} by architecture"))
    for (task, name), part in summary.groupby(["task", "architecture"], sort=False):
        body.append(f"<h3>{html.escape(str(task))} / GT {html.escape(gt)} / "
                    f"{html.escape(str(name))}</h3>")
        for label, by_label in part.groupby("label", sort=False):
            for correct, group in by_label.groupby("correct", sort=False):
                which = "correctly" if bool(correct) else "incorrectly"
                body.append(f"<h4>{html.escape(str(label))}, {which} classified "
                            f"({html.escape(_sizes(group))})</h4>")
                wide = wide_table(group)
                body.append(_table(wide.rename(columns={c: metric_header(c)
                                                        for c in wide.columns})))
            for metric in HEADLINE_METRICS:
                key = f"ranking/{task}/{gt}/{name}/{label}/{metric}"
                if key in figures:
                    body.append(_img(figures[key],
                                     f"{task} {gt} {name} {label}: ranking by {metric}"))
    return body


def write_report(out_html: PathLike, *, summary: pd.DataFrame, models: pd.DataFrame,
                 sanity: pd.DataFrame, figures: Mapping[str, Mapping[str, Path]],
                 provenance: Mapping[str, Any]) -> Path:
    """Write the benchmark's self-contained HTML page.

    Parameters
    ----------
    out_html
        The page.
    summary
        ``benchmark.tsv`` as a frame (:func:`~nipype_xai.benchmark.validation.summarize_benchmark`).
    models
        ``models.tsv``: per task x architecture x training seed, test accuracy, whether it
        learned, subjects scored / skipped.
    sanity
        The randomisation check's summary (:func:`~nipype_xai.benchmark.summarize_sanity`;
        may be empty).
    figures
        :func:`write_figures`' result.
    provenance
        ``provenance.json``'s content.

    Returns
    -------
    pathlib.Path
        The page written.
    """
    settings = provenance.get("settings", {})
    random_models = ", ".join("random_model_" + m for m in settings.get("random_model_methods", []))
    body = [
        (f"<p>{len(settings.get('methods', []))} attribution methods and the baselines "
         f"{', '.join(settings.get('baselines', []))} and {random_models}, scored against the "
         "known ground truth of synthetic cohorts (SPEC §8).</p>"),
        ('<p class="note">Maps explain the predicted class, in template space on the model grid, '
         "scored as |map| inside the template brain mask, against each ground-truth definition "
         "(<code>groundtruth</code>; each has its section, the exact <code>signal</code> first). "
         "Only subjects with a mask of the definition are scored (controls have no signal and are "
         "skipped under <code>signal</code>; under the atrophy task's <code>roi</code> both "
         "classes have the caudate mask and are scored, kept apart by <code>label</code>). "
         "Correctly and incorrectly classified subjects are summarised apart "
         "(<code>correct</code>). Intervals: "
         f"{settings.get('ci', 0.95):.0%} percentile bootstrap over subjects and training "
         f"seeds (crossed), {settings.get('n_boot', '')} replicates, paired across methods; "
         "<code>n</code> counts subject &times; seed cells. Baselines in grey "
         "italics. Lower is better for emd, higher for the other metrics.</p>"),
        "<h2>Models</h2>", _table(models, method_column=None),
    ]
    if "learned" in models.columns:
        failed = models[~models["learned"].astype(str).str.lower().isin(["true", "1"])]
        if len(failed):
            names = ", ".join(f"{r.task}/{r.architecture} seed {r.training_seed} "
                              f"({float(r.test_balanced_accuracy):.2f})"
                              for r in failed.itertuples())
            body.append(f'<p class="note">Did not learn (test balanced accuracy below '
                        f"{settings.get('min_balanced_accuracy', 0.7)}), left out of every "
                        f"summary: {html.escape(names)}.</p>")
    for gt, rows in _groundtruth_parts(summary):
        heading, description = _groundtruth_heading(gt)
        body += [f"<h2>{html.escape(heading)}</h2>",
                 f'<p class="note">{html.escape(description)}</p>',
                 *_groundtruth_sections(gt, rows, figures)]
    if len(sanity):
        for (task, name), part in sanity.groupby(["task", "architecture"], sort=False):
            key = f"sanity/{task}/{name}"
            if key in figures:
                body.append(f"<h2>{html.escape(str(task))} / {html.escape(str(name))}: "
                            f"cascading randomisation ({int(part['n'].max())} "
                            "subject &times; seed cells, mean and 95 % CI)</h2>")
                body.append(_img(figures[key], f"{task} {name}: sanity check"))
    body.append("<details><summary>All statistics (benchmark.tsv)</summary>"
                + _table(summary) + "</details>")
    body.append("<h2>Provenance</h2>")
    items = pd.DataFrame([
        {"item": "command", "value": provenance.get("command")},
        {"item": "seed", "value": provenance.get("seed")},
        {"item": "cohort seeds", "value": provenance.get("cohort_seeds")},
        {"item": "versions", "value": provenance.get("versions")},
        {"item": "machine", "value": provenance.get("machine")},
        {"item": "settings", "value": settings},
        {"item": "wall time (s)", "value": provenance.get("seconds")},
    ])
    body.append(_table(items, method_column=None))
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>nipype-xai validation benchmark</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>nipype-xai validation benchmark</h1>\n"
            f'<p class="note">nipype-xai {html.escape(__version__)} &middot; '
            f"{html.escape(str(provenance.get('finished', '')))}</p>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
    return atomic_write(out_html, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
