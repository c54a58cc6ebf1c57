"""nipype_xai.tables: the one BIDS TSV reader/writer."""

import numpy as np
import pandas as pd
import pytest

from nipype_xai.tables import read_tsv, write_tsv


def test_round_trip_keeps_labels_missing_values_booleans_and_floats(tmp_path):
    table = pd.DataFrame({
        "participant_id": ["sub-01", "sub-02"], "subject": ["01", "007"],
        "score": [0.1 + 0.2, np.nan], "correct": [True, False], "n": [3, 4],
    })
    path = write_tsv(table, tmp_path / "t.tsv")
    text = path.read_text().splitlines()
    assert text[0] == "participant_id\tsubject\tscore\tcorrect\tn"
    assert text[2].split("\t") == ["sub-02", "007", "n/a", "false", "4"]
    back = read_tsv(path)
    assert back["subject"].tolist() == ["01", "007"]          # text, not the numbers 1 and 7
    assert back["score"].iloc[0] == 0.1 + 0.2                 # written in full, read back exactly
    assert np.isnan(back["score"].iloc[1])
    assert back["correct"].tolist() == [True, False]
    assert back["n"].tolist() == [3, 4]


def test_all_text_keeps_cells_as_written(tmp_path):
    path = tmp_path / "f.tsv"
    path.write_text("subject\treason\n01\tn/a\n")
    assert read_tsv(path, all_text=True).to_dict("records") == [{"subject": "01", "reason": "n/a"}]


def test_unreadable_table_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"^missing\.tsv: cannot be read as a TSV table"):
        read_tsv(tmp_path / "missing.tsv")
