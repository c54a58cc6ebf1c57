"""Templates without network: the user's TemplateFlow first, nipype-xai's nilearn-seeded copy after.

TemplateFlow reads ``TEMPLATEFLOW_HOME`` once, when first imported, and unpacks its skeleton
there; so every scenario runs in a fresh Python process with the environment set beforehand.
This machine has no network, which is the case under test (TemplateFlow's download of a
zero-byte skeleton file raises).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("templateflow")

FALLBACK_DIR = "templateflow/tpl-MNI152NLin2009aSym"


def run_python(script: str, tf_home: Path, xai_home: Path, timeout: float = 240) -> dict:
    """Run ``script`` in a new interpreter with both homes set; it prints one JSON line last."""
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(tf_home), "NIPYPE_XAI_HOME": str(xai_home)}
    env.pop("TEMPLATEFLOW_USE_DATALAD", None)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


OFFLINE_SCENARIO = """
import json, logging, os, sys
from pathlib import Path
import nipype_xai.templates as templates
imported_templateflow_early = "templateflow" in sys.modules

records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append((record.levelname, record.getMessage()))
logging.getLogger("nipype_xai").addHandler(Keep())
logging.getLogger("nipype_xai").setLevel(logging.INFO)

def tree(root):
    root = Path(root)
    return {str(p.relative_to(root)): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(root.rglob("*")) if p.is_file()}

import templateflow.api  # TemplateFlow unpacks its skeleton into the empty home: its doing, not ours
tf_before = tree(os.environ["TEMPLATEFLOW_HOME"])
queries = {
    "t1w": {},
    "mask": {"suffix": "mask", "desc": "brain"},
    "gm": {"suffix": "probseg", "label": "GM"},
    "wm": {"suffix": "probseg", "label": "WM"},
    "t1w_res2": {"resolution": 2},
    "mask_res2": {"suffix": "mask", "desc": "brain", "resolution": 2},
    "gm_res2": {"suffix": "probseg", "label": "GM", "resolution": 2},
}
first = {name: str(templates.get_template(**q)) for name, q in queries.items()}
ours_after_first = tree(os.environ["NIPYPE_XAI_HOME"])
second = {name: str(templates.get_template(**q)) for name, q in queries.items()}
ours_after_second = tree(os.environ["NIPYPE_XAI_HOME"])
try:
    templates.get_template("MNI152NLin2009cAsym", resolution=2)
    other = None
except templates.TemplateNotAvailable as exc:
    other = str(exc)
try:
    templates.get_template(suffix="probseg", label="CSF")
    csf = None
except templates.TemplateNotAvailable as exc:
    csf = str(exc)
print(json.dumps({
    "imported_templateflow_early": imported_templateflow_early,
    "first": first, "second": second,
    "ours_after_first": ours_after_first, "ours_after_second": ours_after_second,
    "tf_before": tf_before, "tf_after": tree(os.environ["TEMPLATEFLOW_HOME"]),
    "other": other, "csf": csf, "records": records,
}))
"""


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    tf_home, xai_home = root / "tf", root / "xai"
    result = run_python(OFFLINE_SCENARIO, tf_home, xai_home)
    return result, tf_home, xai_home


def test_offline_get_template_returns_readable_mni_files(offline):
    result, _, xai_home = offline
    paths = {name: Path(p) for name, p in result["first"].items()}
    base = xai_home / FALLBACK_DIR
    assert paths["t1w"] == base / "tpl-MNI152NLin2009aSym_res-1_desc-brain_T1w.nii.gz"
    assert paths["mask"] == base / "tpl-MNI152NLin2009aSym_res-1_desc-brain_mask.nii.gz"
    assert paths["gm"] == base / "tpl-MNI152NLin2009aSym_res-1_label-GM_probseg.nii.gz"
    assert paths["wm"] == base / "tpl-MNI152NLin2009aSym_res-1_label-WM_probseg.nii.gz"

    t1w, mask, gm, wm = (nib.load(paths[k]) for k in ("t1w", "mask", "gm", "wm"))
    expected_affine = np.array([[1, 0, 0, -98], [0, 1, 0, -134], [0, 0, 1, -72], [0, 0, 0, 1.0]])
    for img in (t1w, mask, gm, wm):
        assert img.shape == (197, 233, 189)
        np.testing.assert_array_equal(img.affine, expected_affine)
        assert int(img.header["sform_code"]) == 4  # MNI152
    mask_data = np.asanyarray(mask.dataobj)
    assert mask_data.dtype == np.uint8 and set(np.unique(mask_data)) == {0, 1}
    # A brain, not a head: ~1.9 litres, and the T1w is zero outside it (skull-stripped).
    assert 1.7e6 < mask_data.sum() < 2.0e6
    t1w_data = t1w.get_fdata()
    assert t1w_data[mask_data == 0].max() == 0 and t1w_data[mask_data == 1].min() > 0
    for probseg in (gm, wm):
        values = probseg.get_fdata()
        assert values.min() == 0.0 and values.max() == pytest.approx(1.0)
    # GM cortex ribbon vs deep WM at an MNI coordinate known to be white matter (centrum semiovale).
    ijk = tuple(int(v) for v in np.linalg.inv(expected_affine) @ np.array([-25, -10, 30, 1.0]))[:3]
    assert wm.get_fdata()[ijk] > 0.8 > gm.get_fdata()[ijk]

    description = json.loads((base / "template_description.json").read_text())
    assert description["Identifier"] == "MNI152NLin2009aSym"
    assert description["SourceDatasets"][0]["Name"] == "nilearn"
    notes = description["Notes"]
    assert "skull-stripped" in notes and "197x233x189" in notes and "193x229x193" in notes
    sources = description["Sources"]
    assert sources["tpl-MNI152NLin2009aSym_res-1_desc-brain_T1w.nii.gz"]["NilearnFile"] == (
        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    assert description["res"]["2"]["shape"] == [99, 117, 95]


def test_head_t1w_request_is_answered_with_brain_and_a_warning(offline):
    result, _, _ = offline
    warnings = [message for level, message in result["records"] if level == "WARNING"]
    assert any("head T1w" in m and "skull-stripped" in m for m in warnings)
    assert not result["imported_templateflow_early"]  # importing nipype_xai touches no TemplateFlow home


def test_second_call_rewrites_nothing(offline):
    result, _, _ = offline
    assert result["second"] == result["first"]
    assert result["ours_after_second"] == result["ours_after_first"]
    # Nothing half-written or staged is left behind.
    assert not [name for name in result["ours_after_first"] if Path(name).name.startswith(".")]


def test_templateflow_home_is_never_written(offline):
    result, _, _ = offline
    assert result["tf_before"], "TemplateFlow should have unpacked its skeleton on import"
    assert result["tf_after"] == result["tf_before"]


def test_lower_resolution_is_derived_and_cached(offline):
    result, _, xai_home = offline
    base = xai_home / FALLBACK_DIR
    t1w2 = nib.load(result["first"]["t1w_res2"])
    mask2 = nib.load(result["first"]["mask_res2"])
    gm2 = nib.load(result["first"]["gm_res2"])
    assert Path(result["first"]["t1w_res2"]) == (
        base / "tpl-MNI152NLin2009aSym_res-2_desc-brain_T1w.nii.gz")
    expected_affine = np.array([[2, 0, 0, -98], [0, 2, 0, -134], [0, 0, 2, -72], [0, 0, 0, 1.0]])
    for img in (t1w2, mask2, gm2):
        assert img.shape == (99, 117, 95)  # 2 mm over the same field of view as the 1 mm grid
        np.testing.assert_array_equal(img.affine, expected_affine)
    mask2_data = np.asanyarray(mask2.dataobj)
    assert mask2_data.dtype == np.uint8 and set(np.unique(mask2_data)) == {0, 1}
    # Brain volume is kept (in mm^3) through nearest-neighbour resampling.
    mask1 = np.asanyarray(nib.load(result["first"]["mask"]).dataobj)
    assert int(mask2_data.sum()) * 8 == pytest.approx(int(mask1.sum()), rel=0.02)
    gm2_data = gm2.get_fdata()
    assert 0.0 <= gm2_data.min() and gm2_data.max() <= 1.0 + 1e-6
    gm1_total = nib.load(result["first"]["gm"]).get_fdata().sum()
    assert gm2_data.sum() * 8 == pytest.approx(gm1_total, rel=0.02)  # GM volume kept (mm^3)
    # The grid nilearn users know: identical to nilearn's own 2 mm MNI template.
    from nilearn.datasets import load_mni152_template

    np.testing.assert_array_equal(load_mni152_template(resolution=2).affine, expected_affine)
    assert f"{FALLBACK_DIR}/{Path(result['first']['mask_res2']).name}" in result["ours_after_first"]


def test_other_template_fails_with_prefetch_instructions(offline):
    result, _, _ = offline
    message = result["other"]
    assert message is not None and "MNI152NLin2009cAsym" in message
    # One line: the command line shows only the first line of an error.
    assert "\n" not in message and "\n" not in result["csf"]
    assert "import templateflow.api as tf; tf.get('MNI152NLin2009cAsym', resolution=2)" in message
    assert "TEMPLATEFLOW_HOME" in message
    # A file nilearn does not ship (CSF) is refused the same way, listing what the copy has.
    assert "tf.get('MNI152NLin2009aSym', resolution=1)" in result["csf"]
    assert "label-GM_probseg" in result["csf"]


PREFETCHED_SCENARIO = """
import json, os
from pathlib import Path
import numpy as np, nibabel as nib
import templateflow.api  # unpacks the zero-byte skeleton
home = Path(os.environ["TEMPLATEFLOW_HOME"]) / "tpl-MNI152NLin2009aSym"
# What a lab's prefetch leaves: the real file in place of the zero-byte skeleton entry.
prefetched = home / "tpl-MNI152NLin2009aSym_res-1_T1w.nii.gz"
assert prefetched.stat().st_size == 0
nib.save(nib.Nifti1Image(np.full((4, 5, 6), 7, np.int16), np.eye(4)), prefetched)
from nipype_xai.templates import get_template
t1w = get_template()
mask = get_template(suffix="mask", desc="brain")  # not prefetched: falls back
print(json.dumps({"t1w": str(t1w), "prefetched": str(prefetched), "mask": str(mask)}))
"""


def test_prefetched_templateflow_file_is_preferred(tmp_path):
    result = run_python(PREFETCHED_SCENARIO, tmp_path / "tf", tmp_path / "xai")
    assert result["t1w"] == result["prefetched"]
    assert np.asanyarray(nib.load(result["t1w"]).dataobj).max() == 7
    assert Path(result["mask"]).is_relative_to(tmp_path / "xai" / FALLBACK_DIR)


CONCURRENT_SEEDING = """
import json, os, sys, time
from pathlib import Path
from nipype_xai.templates import seed_fallback_home
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))  # all processes seed at the same moment
root = seed_fallback_home()
print(json.dumps({"root": str(root)}))
"""


def test_concurrent_seeding_is_atomic(tmp_path):
    """Three processes seed one empty home at once: one complete copy, nothing left staged."""
    import time

    env = {**os.environ, "TEMPLATEFLOW_HOME": str(tmp_path / "tf"),
           "NIPYPE_XAI_HOME": str(tmp_path / "xai")}
    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(CONCURRENT_SEEDING), str(start)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _, err in outputs]
    root = tmp_path / "xai" / "templateflow"
    assert sorted(p.name for p in root.iterdir()) == ["tpl-MNI152NLin2009aSym"]
    files = snapshot(root)
    assert sorted(Path(name).name for name in files) == sorted([
        "template_description.json",
        "tpl-MNI152NLin2009aSym_res-1_desc-brain_T1w.nii.gz",
        "tpl-MNI152NLin2009aSym_res-1_desc-brain_mask.nii.gz",
        "tpl-MNI152NLin2009aSym_res-1_label-GM_probseg.nii.gz",
        "tpl-MNI152NLin2009aSym_res-1_label-WM_probseg.nii.gz",
    ])
    for name in files:  # every file complete and readable
        if name.endswith(".nii.gz"):
            nib.load(root / name).get_fdata()
        else:
            json.loads((root / name).read_text())
    # The TemplateFlow home was not even created: seeding never looks at it.
    assert not (tmp_path / "tf").exists()


def test_incomplete_copy_is_replaced_whole(tmp_path, monkeypatch):
    """A template folder missing files (we only ever rename complete copies in) is swapped out."""
    from nipype_xai import templates

    monkeypatch.setenv("NIPYPE_XAI_HOME", str(tmp_path))
    partial = tmp_path / FALLBACK_DIR
    partial.mkdir(parents=True)
    (partial / "tpl-MNI152NLin2009aSym_res-1_desc-brain_T1w.nii.gz").write_bytes(b"")
    root = templates.seed_fallback_home()
    assert root == tmp_path / "templateflow"
    assert sorted(p.name for p in root.iterdir()) == ["tpl-MNI152NLin2009aSym"]
    t1w = partial / "tpl-MNI152NLin2009aSym_res-1_desc-brain_T1w.nii.gz"
    assert nib.load(t1w).shape == (197, 233, 189)
    assert len(list(partial.iterdir())) == 5
