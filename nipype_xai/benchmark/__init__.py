"""The validation benchmark: every attribution method scored against a known signal (SPEC §8).

>>> from nipype_xai.benchmark import run_validation_benchmark
>>> run_validation_benchmark("bench", tasks=["lesion"], n_train=100, n_test=40)  # doctest: +SKIP

``nipype-xai benchmark OUTPUT_DIR`` is the command-line entry (:mod:`nipype_xai.cli.benchmark`);
this package imports nothing from the command line.
"""

from .scoring import model_randomization_check, subject_maps
from .settings import (
    ARCHITECTURES,
    BASELINES,
    DEFAULT_RANDOM_MODEL_METHODS,
    GROUNDTRUTHS,
    METRICS,
    TO_TEMPLATE,
    BenchmarkSettings,
)
from .training import architecture_spec, cohort_seeds
from .validation import (
    merge_benchmark,
    read_table,
    run_validation_benchmark,
    summarize_benchmark,
    summarize_sanity,
)

# The package's public names, listed once (the modules' other names are for each other).
__all__ = [
    "ARCHITECTURES",
    "BASELINES",
    "BenchmarkSettings",
    "DEFAULT_RANDOM_MODEL_METHODS",
    "GROUNDTRUTHS",
    "METRICS",
    "TO_TEMPLATE",
    "architecture_spec",
    "cohort_seeds",
    "merge_benchmark",
    "model_randomization_check",
    "read_table",
    "run_validation_benchmark",
    "subject_maps",
    "summarize_benchmark",
    "summarize_sanity",
]
