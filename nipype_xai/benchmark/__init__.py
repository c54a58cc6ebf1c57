"""The validation benchmark: every attribution method scored against a known signal (SPEC §8).

>>> from nipype_xai.benchmark import run_validation_benchmark
>>> run_validation_benchmark("bench", tasks=["lesion"], n_train=100, n_test=40)  # doctest: +SKIP

``nipype-xai benchmark OUTPUT_DIR`` is the command-line entry (:mod:`.command`).
"""

from . import validation
from .validation import *  # noqa: F401,F403 - the public names, listed once in validation.__all__

__all__ = list(validation.__all__)
