"""Moved to :mod:`nipype_xai.cli.benchmark` (the command line belongs to the CLI package).

Kept only while :mod:`nipype_xai.cli.run` still imports ``add_arguments`` and ``run`` from here;
the names are looked up on first use, so importing :mod:`nipype_xai.benchmark` imports nothing
from :mod:`nipype_xai.cli`. Remove once ``cli/run.py`` imports :mod:`nipype_xai.cli.benchmark`.
"""

from __future__ import annotations

import importlib
from typing import Any

_MOVED = ("add_arguments", "main", "run")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module("nipype_xai.cli.benchmark"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
