"""The ``nipype-xai`` command line (SPEC §7): ``nipype_xai.cli.run.main``."""

from .run import main

__all__ = ["main"]
