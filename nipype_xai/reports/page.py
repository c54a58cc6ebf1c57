"""The building blocks of nipype-xai's HTML pages: one stylesheet, tables, links, embedded figures,
the page frame and its atomic write (:mod:`nipype_xai.reports.subject` and
:mod:`nipype_xai.reports.group` assemble pages from them; file names are listed in
:mod:`nipype_xai.reports.html`).

Links are relative from the page's own dataset-relative ``location`` to a derivative's
dataset-relative name, so a page keeps working wherever the dataset is copied.
"""

from __future__ import annotations

import base64
import html
import os
import posixpath
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import quote

import numpy as np
import pandas as pd

from .. import __version__
from ..atomic import atomic_write
from ..metrics.group import LOWER_IS_BETTER
from .figures import SCALE_PERCENTILE, is_baseline

__all__ = [
    "REDUNDANT_METRICS",
    "SCALE_NOTE",
    "FiguresDir",
    "constant_columns",
    "constants_note",
    "direction_note",
    "embedded_png",
    "error_list",
    "escaped",
    "failure_row",
    "figure_name",
    "file_link",
    "format_value",
    "href",
    "html_table",
    "link",
    "page",
    "redundant_metrics",
    "redundant_note",
    "report_time",
    "subject_prefix",
    "write_page",
]

PathLike = Union[str, os.PathLike]

#: The colour-scale note under every attribution figure.
SCALE_NOTE = (
    f"Each map is shown as |map| divided by its own {SCALE_PERCENTILE:g}th percentile of |map| "
    "over nonzero voxels and clipped to [0, 1], so every row shares one colour scale; values "
    "below the display threshold are transparent."
)

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


def subject_prefix(subject: str) -> str:
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


def failure_row(item: Any) -> tuple[str, str]:
    # (subject, reason) pairs, or rows of a failures table: participant_id (with session_id where
    # sessions exist) or subject, and reason.
    if isinstance(item, Mapping):
        who = item.get("participant_id", item.get("subject"))
        if who is not None and "reason" in item:
            session = item.get("session_id")
            if session and str(session) != "n/a":
                who = f"{who}_{session}"
            return str(who), str(item["reason"])
        values = list(item.values())
        if len(values) >= 2:
            return str(values[0]), " ".join(str(v) for v in values[1:])
        raise ValueError(f"failure {item!r}: expected a subject and a reason")
    subject, reason = item
    return str(subject), str(reason)


def escaped(value: Any) -> str:
    return html.escape(format_value(value), quote=True)


def html_table(frame: pd.DataFrame, *, best: Optional[Mapping[str, bool]] = None,
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
            cells.append(f'<td class="{" ".join(classes)}">{escaped(row[column])}</td>')
        baseline = baseline_column is not None and is_baseline(str(row[baseline_column]))
        tr = '<tr class="baseline">' if baseline else "<tr>"
        body.append(tr + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def constant_columns(frame: pd.DataFrame, keep: Iterable[str] = ()) -> tuple[pd.DataFrame, dict]:
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


def constants_note(constant: Mapping[str, Any]) -> str:
    if not constant:
        return ""
    items = "; ".join(f"<code>{html.escape(str(k))}</code> = {escaped(v)}"
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


def redundant_note(redundant: Mapping[str, str]) -> str:
    return "".join(f'<p class="note">{REDUNDANT_METRICS[m][1].format(metric=m, same=twin)}</p>'
                   for m, twin in redundant.items())


def direction_note(metrics: Iterable[str]) -> str:
    """Which of the metrics shown are better when lower (only those shown are named)."""
    lower = sorted(set(metrics) & LOWER_IS_BETTER)
    if not lower:
        return "higher is better for every metric"
    return f"lower is better for {', '.join(lower)}, higher for the others"


def href(target: str, location: str) -> str:
    """``target`` (dataset-relative) as a link from the page at ``location`` (dataset-relative)."""
    start = posixpath.dirname(location) or "."
    relative = posixpath.relpath(posixpath.normpath(target), start)
    return html.escape(quote(relative, safe="/-_.~"), quote=True)


def link(target: str, location: str, text: Optional[str] = None) -> str:
    label = html.escape(text if text is not None else posixpath.basename(target))
    return f'<a href="{href(target, location)}">{label}</a>'


def file_link(target: Optional[str], location: str) -> str:
    """A derivative's name as a link (in ``<code>``), or nothing when it has none."""
    if not target:
        return ""
    return f"<code>{link(target, location)}</code>"


def embedded_png(png: Path, alt: str) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,{data}">'


def error_list(items: Sequence[str]) -> str:
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


def page(title: str, body: Iterable[str]) -> str:
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


def write_page(out_html: PathLike, text: str) -> Path:
    return atomic_write(out_html, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


class FiguresDir:
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
