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
from typing import Any, Mapping, Optional

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
from ..bids import bids_uri, commit_subject, completion_record_path, derivative_path, \
    input_dataset_links, update_dataset_links, write_dataset_description, write_json

__all__ = ["SOURCE_FILE", "CommitDerivatives", "DerivativesDataSink", "ReportsSink",
           "copy_atomically", "derivative_extension", "mentions_source_file"]

#: Placeholder, in a sink's ``meta_dict`` or ``meta_per_file`` values, for the BIDS URI of its
#: ``source_file`` (an input connected at run time, e.g. a lab's own T1w node).
SOURCE_FILE = "<source_file>"

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


def _dataset_folder(base_directory: str, describe: bool = True,
                    links: Optional[Mapping[str, str]] = None) -> Path:
    """The sink's dataset folder, absolute and created; described when ``describe``."""
    base = Path(base_directory).absolute()
    base.mkdir(parents=True, exist_ok=True)
    if describe:
        _dataset_description_if_missing(base, links)
    return base


def _dataset_description_if_missing(base_directory: Path,
                                    links: Optional[Mapping[str, str]] = None) -> None:
    # The first sink of the first subject writes it, under the dataset's lock (the .bidsignore
    # beside it is read, updated and rewritten); later ones add the dataset links it lacks.
    if not (base_directory / "dataset_description.json").is_file() or links:
        with dataset_lock(base_directory):
            if not (base_directory / "dataset_description.json").is_file():
                write_dataset_description(base_directory, dataset_links=links)
            elif links:
                update_dataset_links(base_directory, links)


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
    meta_per_file = traits.List(
        traits.Dict(traits.Str, traits.Any),
        desc="entries added to each file's sidecar, one dict per file (after meta_dict), e.g. "
        "each map's own Sources",
    )
    source_file = traits.Str(
        desc="an input the files derive from that is connected rather than known when the "
        "workflow is built (e.g. a lab's T1w node): its BIDS URI replaces the token "
        "SOURCE_FILE in the sidecar entries, or is the sidecars' Sources when they have none "
        "(an empty Sources is kept: nothing known to name)"
    )
    dataset_root = traits.Str(
        desc="the derivatives dataset the files belong to, for source_file's BIDS URI (default: "
        "base_directory)"
    )
    dataset_links = traits.Dict(
        traits.Str, traits.Str,
        desc="DatasetLinks name -> folder of the datasets source_file may be in (e.g. 'raw')",
    )
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
        per_file = self._per_file(inputs.meta_per_file if isdefined(inputs.meta_per_file)
                                  and inputs.meta_per_file else None, len(files), "meta_per_file")
        if isdefined(inputs.source_file) and inputs.source_file:
            uri = self._source_uri(base)
            if "Sources" not in meta and not any(m and "Sources" in m for m in per_file):
                meta["Sources"] = [uri]
            meta = _substitute(meta, uri)
            per_file = [_substitute(m, uri) if m else m for m in per_file]

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
        for (in_file, target, _entities), sidecar, own in zip(targets, sidecars, per_file):
            out_files.append(str(copy_atomically(in_file, target)))
            if sidecar or meta or own:
                content = json.loads(Path(sidecar).read_text()) if sidecar else {}
                content.update(meta)
                content.update(own or {})
                json_path = target.with_name(
                    target.name[: -len(_entities["extension"])] + ".json"
                )
                out_meta.append(str(_write_json_if_changed(json_path, content)))

        self._results["out_file"] = out_files
        if out_meta:
            self._results["out_meta"] = out_meta
        return runtime

    def _source_uri(self, base: Path) -> str:
        """BIDS URI of ``source_file``; a dataset it lies in that no link names yet is linked."""
        inputs = self.inputs
        root = Path(inputs.dataset_root if isdefined(inputs.dataset_root) and inputs.dataset_root
                    else base).absolute()
        links = dict(inputs.dataset_links) if isdefined(inputs.dataset_links) else {}
        extended = input_dataset_links(None, inputs.source_file, links=links)
        if set(extended) - set(links):
            _dataset_description_if_missing(root, {k: str(v) for k, v in extended.items()})
        return bids_uri(inputs.source_file, root, extended)

    @staticmethod
    def _per_file(value, n_files: int, name: str) -> list:
        """``value`` expanded to one entry per file (None where not given)."""
        if not isdefined(value) or value is None:
            return [None] * n_files
        values = [value] if isinstance(value, (str, dict)) else list(value)
        if len(values) == 1:
            return values * n_files
        if len(values) != n_files:
            raise ValueError(f"{name}: {len(values)} values for {n_files} files")
        return values


def mentions_source_file(value: Any) -> bool:
    """Whether sidecar entries (nested dicts and lists) hold the :data:`SOURCE_FILE` token: a
    sink given them needs its ``source_file`` connected."""
    return _substitute(value, SOURCE_FILE + "?") != _substitute(value, SOURCE_FILE)


def _substitute(value: Any, uri: str) -> Any:
    """``value`` with every string equal to :data:`SOURCE_FILE` replaced by ``uri``."""
    if isinstance(value, str):
        return uri if value == SOURCE_FILE else value
    if isinstance(value, dict):
        return {key: _substitute(item, uri) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_substitute(item, uri) for item in value]
    return value


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
        base = _dataset_folder(self.inputs.base_directory, self.inputs.dataset_description)
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
    dataset_links = traits.Dict(
        traits.Str, traits.Str,
        desc="DatasetLinks name -> folder of every dataset the subject's Sources name (added "
        "to dataset_description.json where missing)",
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
        links = dict(self.inputs.dataset_links) if isdefined(self.inputs.dataset_links) else {}
        base = _dataset_folder(self.inputs.base_directory, links=links)
        files = commit_subject(base, self.inputs.label, self.inputs.in_files)
        self._results["out_files"] = [str(f) for f in files]
        self._results["out_record"] = str(completion_record_path(base, self.inputs.label))
        return runtime
