"""BIDS: derivative names, the derivatives dataset, provenance, commits, and the input queries.

One module per concern, every public name re-exported here (``from nipype_xai.bids import ...``):

- :mod:`.naming`: derivative path patterns (SPEC §6), ``desc`` labels, report and group names.
- :mod:`.dataset`: ``dataset_description.json``, ``.bidsignore``, ``README.md``, sidecars, and the
  checks of the output folder.
- :mod:`.provenance`: BIDS URIs, ``DatasetLinks``, ``SpatialReference``.
- :mod:`.commit`: a subject's derivatives appear complete or not at all.
- :mod:`.query`: the pybids queries that find the participant and group levels' inputs.
"""

from ..atomic import atomic_write
from .commit import (
    commit_subject,
    completion_record_path,
    recorded_files,
    staging_folder,
    subject_status,
)
from .dataset import (
    BIDSIGNORE,
    OutputFolderError,
    check_output_folder,
    update_dataset_links,
    write_dataset_description,
    write_json,
)
from .naming import (
    FAILURES_FILE,
    GROUP_DIR,
    GROUP_MAP_STATISTICS,
    GROUP_REPORT,
    PATH_PATTERNS,
    derivative_path,
    desc_to_method,
    figures_dir,
    group_map_desc,
    group_map_path,
    group_metrics_path,
    group_ranking_path,
    method_to_desc,
    report_path,
    resolution_label,
)
from .provenance import (
    TEMPLATEFLOW_URL,
    bids_uri,
    dataset_root,
    input_dataset_links,
    read_dataset_links,
    template_spatial_reference,
)
from .query import (
    QUERIES,
    BIDSInputError,
    GroupInputs,
    InputProblem,
    SubjectInputs,
    collect_data,
    collect_group_inputs,
)

__all__ = [
    "BIDSIGNORE",
    "FAILURES_FILE",
    "GROUP_DIR",
    "GROUP_MAP_STATISTICS",
    "GROUP_REPORT",
    "PATH_PATTERNS",
    "QUERIES",
    "TEMPLATEFLOW_URL",
    "BIDSInputError",
    "GroupInputs",
    "InputProblem",
    "OutputFolderError",
    "SubjectInputs",
    "atomic_write",
    "bids_uri",
    "check_output_folder",
    "collect_data",
    "collect_group_inputs",
    "commit_subject",
    "completion_record_path",
    "dataset_root",
    "derivative_path",
    "desc_to_method",
    "figures_dir",
    "group_map_desc",
    "group_map_path",
    "group_metrics_path",
    "group_ranking_path",
    "input_dataset_links",
    "method_to_desc",
    "read_dataset_links",
    "recorded_files",
    "report_path",
    "resolution_label",
    "staging_folder",
    "subject_status",
    "template_spatial_reference",
    "update_dataset_links",
    "write_dataset_description",
    "write_json",
]
