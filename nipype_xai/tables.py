"""BIDS tabular files (``.tsv``): the one reader and the one writer every table of nipype-xai goes
through.

BIDS spells the conventions out (Common principles, "Tabular files"): tab-separated, a header row,
``n/a`` for a missing value, and identifiers such as ``participant_id`` are text. pandas does the
parsing; what is ours is only that the conventions hold the same way for every table, so that a
table written by one step reads back identical in another (a resumed benchmark summarises exactly
the numbers it wrote; a label ``01`` never becomes the number 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from .atomic import PathLike, atomic_write

#: The BIDS identifier columns of a participant-level table, in this order (``sub-01``, ``ses-1``).
IDENTIFIER_COLUMNS = ("participant_id", "session_id")

#: Columns that always hold text, wherever they appear: BIDS identifiers and our own labels.
TEXT_COLUMNS = (
    "participant_id", "session_id", "subject", "session", "method", "task", "architecture",
    "label", "layer", "node", "reason", "crashfile",
)

#: Columns of the input-domain check in a predictions TSV
#: (:meth:`nipype_xai.models.domain.InputDistance.as_row`); ``outside_training_inputs`` says whether
#: it warns.
DOMAIN_COLUMNS: tuple[str, ...] = (
    "input_distance", "input_distance_threshold", "outside_training_inputs", "input_quantile_z",
    "input_dissimilarity_z", "input_nonzero_fraction_z",
)

#: How booleans are spelled in a TSV (JSON's spelling, which BIDS uses in sidecars).
_BOOLEAN_TEXT = {True: "true", False: "false"}


def write_tsv(table: pd.DataFrame, path: PathLike, *, float_format: Optional[str] = None) -> Path:
    """Write ``table`` as a BIDS TSV, atomically.

    Missing values become ``n/a``, booleans ``true``/``false``, the index is dropped. Floats are
    written in full (the shortest text that reads back to the same number) unless ``float_format``
    asks otherwise.

    Returns
    -------
    pathlib.Path
        The absolute path written.
    """
    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_bool_dtype(out[column]):
            out[column] = out[column].map(_BOOLEAN_TEXT)
    return atomic_write(path, lambda tmp: out.to_csv(tmp, sep="\t", index=False, na_rep="n/a",
                                                     float_format=float_format))


def read_tsv(path: PathLike, *, text_columns: Iterable[str] = TEXT_COLUMNS,
             all_text: bool = False) -> pd.DataFrame:
    """Read a BIDS TSV: ``n/a`` as missing, identifier columns as text, ``true``/``false`` as bool.

    Parameters
    ----------
    path
        The table.
    text_columns
        Columns read as text when present (default :data:`TEXT_COLUMNS`).
    all_text
        Read every column as text and keep ``n/a`` as written (for tables passed through as they
        are, such as ``failures.tsv``).

    Raises
    ------
    ValueError
        ``"<file>: cannot be read as a TSV table (<why>)"`` for a missing or malformed file.
    """
    try:
        if all_text:
            return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False,
                            dtype={column: str for column in text_columns})
    except (OSError, ValueError) as error:
        raise ValueError(f"{Path(path).name}: cannot be read as a TSV table ({error})") from error
    for column in table.columns:
        values = set(table[column].dropna().unique())
        if values and values <= {"true", "false"}:
            table[column] = table[column].map({"true": True, "false": False})
    return table


def _is_true(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1")


def outside_training_inputs(predictions: pd.DataFrame) -> Optional[str]:
    """Why a predictions table's input lies outside the model's training inputs, or None.

    None also when the table has no input-domain check (a spec without a summary of its training
    inputs). The reason gives the distance and the threshold, e.g. ``"input distance 41.2 >
    threshold 3.1"``.
    """
    if "outside_training_inputs" not in predictions.columns or not len(predictions):
        return None
    row = predictions.iloc[0]
    if not _is_true(row["outside_training_inputs"]):
        return None
    return (f"input distance {_figure(row.get('input_distance'))} > threshold "
            f"{_figure(row.get('input_distance_threshold'))}")


def _figure(value: object) -> str:
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return "n/a"
