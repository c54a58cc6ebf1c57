"""Writing BIDS derivatives from a workflow: ``DerivativesDataSink`` and ``ReportsSink``.

Names come from :func:`nipype_xai.bids.derivative_path` (pybids ``build_path`` with our patterns,
SPEC §6); every file is copied to a temporary name next to its destination and renamed into place
(:func:`nipype_xai.atomic.atomic_write`), so a crash or a killed job never leaves a half-written
derivative. A workflow connects every sink's ``wait_for`` to the subject's last results, so that a
subject's derivatives are written only once all of its computation has succeeded.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from pathlib import Path
from typing import Any

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..atomic import atomic_write, dataset_lock
from ..bids import commit_subject, completion_record_path, derivative_path, \
    write_dataset_description, write_json

__all__ = ["CommitDerivatives", "DerivativesDataSink", "ReportsSink", "copy_atomically",
           "derivative_extension"]

#: Extensions recognised on input files, longest first (``.nii.gz`` before ``.gz``).
_EXTENSIONS = (".nii.gz", ".nii", ".tsv", ".json", ".h5", ".txt", ".mat", ".html", ".svg", ".png")


def derivative_extension(path: str | os.PathLike) -> str:
    """The BIDS ``extension`` of a file: ``.nii.gz`` for ``x.nii.gz``, ``.h5`` for ``x.h5``."""
    name = Path(path).name
    for extension in _EXTENSIONS:
        if name.endswith(extension):
            return extension
    return "".join(Path(name).suffixes) or ""


def copy_atomically(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Copy ``source`` to ``destination`` through a temporary file and one rename.

    An identical destination is left untouched: sinks run on every re-run, and rewriting the same
    bytes would change the file's modification time, which is what Nipype's cache hashes, so the
    group level would recompute everything after every participant-level re-run.
    """
    destination = Path(destination)
    if destination.is_file() and filecmp.cmp(source, destination, shallow=False):
        return destination.absolute()
    return atomic_write(destination, lambda tmp: shutil.copyfile(source, tmp))


def _write_json_if_changed(path: Path, content: dict[str, Any]) -> Path:
    """:func:`~nipype_xai.bids.write_json`, unless the file already holds exactly this content."""
    if path.is_file():
        try:
            if json.loads(path.read_text()) == json.loads(json.dumps(content, default=str)):
                return path.absolute()
        except ValueError:
            pass  # unreadable: rewrite it
    return write_json(path, content)


def _dataset_description_if_missing(base_directory: Path) -> None:
    # The first sink of the first subject writes it, under the dataset's lock (the .bidsignore
    # beside it is read, updated and rewritten).
    if not (base_directory / "dataset_description.json").is_file():
        with dataset_lock(base_directory):
            if not (base_directory / "dataset_description.json").is_file():
                write_dataset_description(base_directory)


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(
        mandatory=True, desc="root of the derivatives dataset (created if missing)"
    )
    in_file = InputMultiObject(
        File(exists=True), mandatory=True, desc="file(s) to write, each under its BIDS name"
    )
    subject = traits.Str(desc="sub- label (without 'sub-')")
    session = traits.Str(desc="ses- label")
    space = traits.Str(desc="space- label (template identifier)")
    res = traits.Str(desc="res- label (grid of a template-space image)")
    label = traits.Str(desc="label- entity (e.g. 'lesion' of a mask)")
    desc = InputMultiObject(
        traits.Str, desc="desc- label: one for all files, or one per file (e.g. a method each)"
    )
    suffix = traits.Str(mandatory=True, desc="BIDS suffix: attribution, mask, T1w, xfm, ...")
    extension = traits.Str(desc="extension; default: that of each in_file")
    from_space = traits.Str(desc="from- entity of a transform (e.g. 'T1w')")
    to_space = traits.Str(desc="to- entity of a transform (e.g. 'MNI152NLin2009aSym')")
    mode = traits.Str(desc="mode- entity of a transform ('image')")
    in_sidecar = InputMultiObject(
        File(exists=True),
        desc="JSON sidecar(s) to write next to the files: one for all, or one per file",
    )
    meta_dict = traits.Dict(
        traits.Str, traits.Any, desc="entries added to (or overriding) every sidecar"
    )
    source_file = traits.Str(
        desc="the input the files derive from (e.g. the T1w, when it is connected rather than "
        "known when the workflow is built): named in the sidecars' Sources as '<source_kind>: "
        "<file name>' unless meta_dict gives Sources already"
    )
    source_kind = traits.Str("source", usedefault=True, desc="what source_file is, e.g. 'T1w'")
    wait_for = traits.List(
        traits.Any,
        desc="results this sink waits for and ignores: connect a subject's last outputs so that "
        "its derivatives are written only after all of its computation has succeeded",
    )
    dataset_description = traits.Bool(
        True, usedefault=True,
        desc="write dataset_description.json in base_directory when it has none (off when "
        "base_directory is a staging folder that CommitDerivatives moves into the dataset)",
    )


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = OutputMultiObject(File(exists=True), desc="written file(s)")
    out_meta = OutputMultiObject(File(exists=True), desc="written sidecar(s)")


class DerivativesDataSink(SimpleInterface):
    """Copy files into a BIDS derivatives dataset under names built from entities (SPEC §6).

    Each file in ``in_file`` is written, atomically, to
    ``derivative_path(entities, base_directory)``.
    ``desc`` (and ``in_sidecar``) may be given once for all files or once per file, so one node
    writes e.g. every method's map. A sidecar is written when ``in_sidecar`` or ``meta_dict`` is
    given: the input JSON updated with ``meta_dict``. ``dataset_description.json`` (and the
    ``.bidsignore`` listing our non-BIDS suffixes) is written when the dataset has none.

    The sink always runs (it is a cheap copy), so derivatives deleted from the output folder are
    restored from the work directory's cache by a re-run.

    Examples
    --------
    >>> sink = DerivativesDataSink(
    ...     base_directory="out", in_file=["sub-01_gradient.nii.gz"], subject="01",
    ...     space="MNI152NLin2009aSym", res="4", desc=["gradient"], suffix="attribution")
    >>> sink.run()  # doctest: +SKIP
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        inputs = self.inputs
        base = Path(inputs.base_directory).absolute()
        files = list(inputs.in_file)
        descs = self._per_file(inputs.desc, len(files), "desc")
        sidecars = self._per_file(inputs.in_sidecar, len(files), "in_sidecar")
        meta = dict(inputs.meta_dict) if isdefined(inputs.meta_dict) else {}
        if isdefined(inputs.source_file) and inputs.source_file and not meta.get("Sources"):
            meta["Sources"] = [f"{inputs.source_kind}: {Path(inputs.source_file).name}"]

        common: dict[str, Any] = {"suffix": inputs.suffix}
        for trait, entity in (
            ("subject", "subject"), ("session", "session"), ("space", "space"), ("res", "res"),
            ("label", "label"), ("from_space", "from"), ("to_space", "to"), ("mode", "mode"),
        ):
            value = getattr(inputs, trait)
            if isdefined(value) and value:
                common[entity] = value

        # Check every name before writing anything: a bad label must not leave half the files.
        targets = []
        for in_file, desc in zip(files, descs):
            entities = dict(common)
            if desc:
                entities["desc"] = desc
            entities["extension"] = (
                inputs.extension if isdefined(inputs.extension) else derivative_extension(in_file)
            )
            targets.append((in_file, derivative_path(entities, base), entities))

        base.mkdir(parents=True, exist_ok=True)
        if inputs.dataset_description:
            _dataset_description_if_missing(base)
        out_files, out_meta = [], []
        for (in_file, target, _entities), sidecar in zip(targets, sidecars):
            out_files.append(str(copy_atomically(in_file, target)))
            if sidecar or meta:
                content = json.loads(Path(sidecar).read_text()) if sidecar else {}
                content.update(meta)
                json_path = target.with_name(
                    target.name[: -len(_entities["extension"])] + ".json"
                )
                out_meta.append(str(_write_json_if_changed(json_path, content)))

        self._results["out_file"] = out_files
        if out_meta:
            self._results["out_meta"] = out_meta
        return runtime

    @staticmethod
    def _per_file(value, n_files: int, name: str) -> list:
        """``value`` expanded to one entry per file (None where not given)."""
        if not isdefined(value) or value is None:
            return [None] * n_files
        values = [value] if isinstance(value, str) else list(value)
        if len(values) == 1:
            return values * n_files
        if len(values) != n_files:
            raise ValueError(f"{name}: {len(values)} values for {n_files} files")
        return values


class _ReportsSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(mandatory=True, desc="root of the derivatives dataset")
    in_report = File(exists=True, mandatory=True, desc="HTML report")
    report_name = traits.Str(
        mandatory=True, desc="file name of the report in base_directory, e.g. 'sub-01.html'"
    )
    in_figures = traits.List(File(exists=True), desc="figure files (PNG/SVG) to copy")
    figures_dir = traits.Str(
        "figures", usedefault=True,
        desc="folder for the figures, relative to base_directory (e.g. 'sub-01/figures')",
    )
    wait_for = traits.List(traits.Any, desc="results this sink waits for and ignores")
    dataset_description = traits.Bool(
        True, usedefault=True,
        desc="write dataset_description.json in base_directory when it has none",
    )


class _ReportsSinkOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="written report")
    out_figures = traits.List(File(exists=True), desc="written figures")


class ReportsSink(SimpleInterface):
    """Copy an HTML report and its figures into the derivatives dataset, atomically.

    Reports are not BIDS files (no entities): they go at the root (``sub-01.html``, as fMRIPrep
    writes them) and their figures under ``figures_dir``; ``.bidsignore`` lists both.
    """

    input_spec = _ReportsSinkInputSpec
    output_spec = _ReportsSinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        base = Path(self.inputs.base_directory).absolute()
        base.mkdir(parents=True, exist_ok=True)
        if self.inputs.dataset_description:
            _dataset_description_if_missing(base)
        figures = []
        if isdefined(self.inputs.in_figures):
            folder = base / self.inputs.figures_dir
            for figure in self.inputs.in_figures:
                figures.append(str(copy_atomically(figure, folder / Path(figure).name)))
        # The report last: it is what a reader opens, and it refers to nothing else on disk.
        report = copy_atomically(self.inputs.in_report, base / self.inputs.report_name)
        self._results["out_report"] = str(report)
        self._results["out_figures"] = figures
        return runtime


class _CommitDerivativesInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(mandatory=True, desc="root of the derivatives dataset")
    label = traits.Str(mandatory=True, desc="the subject: sub-<label>[_ses-<label>]")
    in_files = InputMultiObject(
        File(exists=True), mandatory=True,
        desc="every file the subject's sinks wrote into its staging folder "
        "(nipype_xai.bids.staging_folder)",
    )


class _CommitDerivativesOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True), desc="the committed derivatives")
    out_record = File(exists=True, desc="the subject's completion record")


class CommitDerivatives(SimpleInterface):
    """Move a subject's staged derivatives into the dataset and record it complete, last.

    The subject's sinks write into its staging folder; this node, which waits for all of them,
    calls :func:`nipype_xai.bids.commit_subject`. A run killed at any point leaves the subject
    either as it was before (complete or absent) or without a completion record, which the group
    level skips and the next run completes; never an incomplete subject that looks complete.
    It always runs: the sinks before it always re-stage their files.
    """

    input_spec = _CommitDerivativesInputSpec
    output_spec = _CommitDerivativesOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        base = Path(self.inputs.base_directory).absolute()
        base.mkdir(parents=True, exist_ok=True)
        _dataset_description_if_missing(base)
        files = commit_subject(base, self.inputs.label, self.inputs.in_files)
        self._results["out_files"] = [str(f) for f in files]
        self._results["out_record"] = str(completion_record_path(base, self.inputs.label))
        return runtime
