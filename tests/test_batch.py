"""Subjects batched per model node (``ModelBatch`` / ``BatchItem``, SPEC §9): a batch gives each
subject what ``ModelInference`` and ``Attribution`` give it alone, and an image the batch cannot
explain fails only its own item."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from nipype_xai.attribution import available_methods
from nipype_xai.images import ImageError
from nipype_xai.interfaces import Attribution, BatchItem, ModelBatch, ModelInference

from test_interfaces import AFFINE_4MM, brain_volume, write_model  # noqa: E402

#: Batched convolutions round differently from a batch of one: measured on this CPU with
#: attribute_many, every method's batched map lay within 4.6e-7 of the largest |value| of its
#: one-by-one map (TinyCNN3D, 24x28x24 grid, 3 samples; the largest, lrp_alpha2_beta1); 1e-5
#: leaves room for other CPUs' kernels.
MAP_ATOL_SHARE = 1e-5
PREDICTION_RTOL = 1e-6


def write_subjects(folder: Path, n: int, constant: tuple[int, ...] = ()) -> list[str]:
    paths = []
    for index in range(n):
        data = brain_volume(seed=index) * (1 + 0.1 * index)
        if index in constant:
            data[:] = 7.0
        path = folder / f"sub-{index:02d}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(data, AFFINE_4MM), path)
        paths.append(str(path))
    return paths


def run_node(interface, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    try:
        import os

        os.chdir(folder)
        return interface.run()
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def batch_and_alone(tmp_path_factory):
    """Three subjects through one ModelBatch, and each alone through ModelInference and
    Attribution, with every registered method (seeded)."""
    root = tmp_path_factory.mktemp("batch")
    spec = write_model(root, shape=(12, 12, 12))
    subjects = write_subjects(root, 3)
    methods = list(available_methods())
    batch = run_node(ModelBatch(in_files=subjects, model_spec=str(spec), methods=methods,
                                seed=3), root / "batch")
    alone = []
    for index, in_file in enumerate(subjects):
        prediction = run_node(ModelInference(in_file=in_file, model_spec=str(spec)),
                              root / f"inference-{index}")
        maps = run_node(Attribution(in_file=in_file, model_spec=str(spec), methods=methods,
                                    seed=3), root / f"attribution-{index}")
        alone.append((prediction.outputs.out_tsv, maps.outputs.out_files,
                      maps.outputs.out_sidecars))
    return batch.outputs.out_items, alone, methods


def test_a_batch_gives_each_subject_what_it_gets_alone(batch_and_alone):
    items, alone, methods = batch_and_alone
    assert len(items) == 3
    for index, (tsv, maps, sidecars) in enumerate(alone):
        item = BatchItem(items=items, index=index).run().outputs
        ours, theirs = pd.read_csv(item.out_tsv, sep="\t"), pd.read_csv(tsv, sep="\t")
        assert list(ours.columns) == list(theirs.columns)
        assert ours["predicted_label"].tolist() == theirs["predicted_label"].tolist()
        numeric = ours.select_dtypes("number").columns
        np.testing.assert_allclose(ours[numeric].to_numpy(float), theirs[numeric].to_numpy(float),
                                   rtol=PREDICTION_RTOL)
        # The same files, named alike, in the order of the methods.
        assert [Path(p).name for p in item.out_files] == [Path(p).name for p in maps]
        assert len(item.out_files) == len(methods)
        for method, mine, reference in zip(methods, item.out_files, maps):
            a = np.asanyarray(nib.load(mine).dataobj)
            b = np.asanyarray(nib.load(reference).dataobj)
            assert np.abs(b).max() > 0, method
            np.testing.assert_allclose(a, b, rtol=0, atol=MAP_ATOL_SHARE * np.abs(b).max(),
                                       err_msg=method)
        for method, mine, reference in zip(methods, item.out_sidecars, sidecars):
            a, b = json.loads(Path(mine).read_text()), json.loads(Path(reference).read_text())
            # A warning names the map's sample: its position in the batch, 0 alone.
            assert len(a.pop("Warnings", [])) == len(b.pop("Warnings", [])), method
            for key in ("Probability", "TargetProbability"):
                assert a.pop(key) == pytest.approx(b.pop(key), rel=PREDICTION_RTOL)
            assert a == b, method


def test_stochastic_maps_do_not_depend_on_the_batch(batch_and_alone):
    # Not the trivial agreement of maps that ignore their seed: two subjects' SmoothGrad maps
    # differ, and each equals its own map alone (checked above).
    items, _, methods = batch_and_alone
    files = [BatchItem(items=items, index=i).run().outputs.out_files for i in (0, 1)]
    position = methods.index("smoothgrad")
    first, second = (np.asanyarray(nib.load(f[position]).dataobj) for f in files)
    assert not np.allclose(first, second)


def test_an_image_the_batch_cannot_explain_fails_its_item_alone(tmp_path):
    spec = write_model(tmp_path, shape=(12, 12, 12))
    subjects = write_subjects(tmp_path, 3, constant=(1,))
    batch = run_node(ModelBatch(in_files=subjects, model_spec=str(spec),
                                methods=["gradient", "smoothgrad"]), tmp_path / "batch")
    items = batch.outputs.out_items
    with pytest.raises(ImageError, match="sub-01_T1w.nii.gz"):
        BatchItem(items=items, index=1).run()
    for index in (0, 2):
        outputs = BatchItem(items=items, index=index, in_file=subjects[index]).run().outputs
        assert len(outputs.out_files) == 2 and Path(outputs.out_tsv).is_file()
    # An item read for another subject's input is refused, not silently swapped.
    with pytest.raises(ValueError, match="sub-02_T1w.nii.gz"):
        BatchItem(items=items, index=2, in_file=subjects[0]).run()


def test_a_batch_without_methods_predicts(tmp_path):
    spec = write_model(tmp_path, shape=(12, 12, 12))
    subjects = write_subjects(tmp_path, 2)
    batch = run_node(ModelBatch(in_files=subjects, model_spec=str(spec)), tmp_path / "batch")
    outputs = BatchItem(items=batch.outputs.out_items, index=1).run().outputs
    assert outputs.out_files == [] and Path(outputs.out_tsv).is_file()
