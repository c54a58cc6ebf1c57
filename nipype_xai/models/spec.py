"""Model specs: the JSON file that tells the pipeline how to build, load and feed a model (SPEC §4).

.. code-block:: json

    {"architecture": "nipype_xai.models.architectures:TinyCNN3D",
     "kwargs": {"n_outputs": 2},
     "weights": "tiny.pt",
     "input": {"space": "MNI152NLin2009aSym", "resolution_mm": 2, "shape": [96, 112, 96],
               "normalization": "zscore", "mask": "nonzero"},
     "outputs": ["control", "lesion"],
     "task": "classification"}

The trust boundary (SPEC §10)
-----------------------------
A model spec comes from someone else and is untrusted: reading and loading it must not run code
that the user did not install on purpose, nor read files the spec's author chose outside the spec's
folder.

* **Architectures.** ``"package.module:Class"`` is imported only when the module's dotted name is in
  :data:`TRUSTED_ARCHITECTURE_MODULES` (``nipype_xai``, ``monai.networks.nets``,
  ``torchvision.models``) or below one of them (``entry + "."``). The name is checked *before*
  anything is imported, so ``"this:Foo"`` or ``"lab_models.nets:Net"`` runs no module's top-level
  code. The package must also come from where it is installed, never from the working directory:
  its top-level package is looked up by the import system with the relative ``sys.path`` entries
  (``''``, ``'.'``) and the working directory left out (``python -c``, ``python -m`` and the
  interactive interpreter put the latter first), and the package an import would give (already
  imported, or the first found on the full ``sys.path``) must be that one, so a ``monai/`` folder
  in the working directory is refused, not imported. Any other absolute ``sys.path`` entry counts
  as an install location (the ``nipype-xai`` command puts no folder of the user's on
  ``sys.path``). ``nipype_xai`` itself is the package running this code, so it is accepted wherever
  it is installed (an editable install in the working directory included). After the import, the
  class must be a ``torch.nn.Module`` subclass *defined* in an allowed module (``cls.__module__``),
  so a re-export such as ``nipype_xai.models.architectures:nn.Conv3d`` is refused too. Anything
  else needs the explicit opt-in ``trust_code=True`` (the command line's ``--trust-model-code``) on
  :func:`load_model`, :func:`model_output_count` and every function that builds the architecture;
  with it the module is imported as Python would import it.
* **Weights.** A relative ``weights`` path must resolve (``os.path.realpath``: ``..`` and symbolic
  links count) inside the spec's folder (resolved too); ``~`` and absolute paths are refused. The
  opt-in is ``external_weights=True`` (``--allow-external-weights``) on :func:`load_model_spec` and
  :func:`load_model`. The same rules and opt-in hold for the mean image of an ``input_summary``
  (below).
* **Reading weights.** Only ``torch.load(..., weights_only=True)``: a weights file that holds
  pickled code or objects is refused, never unpickled. A ``weights_sha256`` that differs from the file's is
  reported without the file's actual digest (no hash oracle for files the spec may point at), and a
  file that is not a PyTorch weights file (a text file, an empty file, random bytes, a folder) gives
  a one-line :class:`ModelSpecError` naming the spec and the file.

Every error is one line that names the spec file and says what to do.

The training inputs' summary
----------------------------
An optional ``"input_summary"`` object describes the model's training inputs on its grid
(:mod:`nipype_xai.models.domain`: intensity quantiles, the non-zero fraction, the dissimilarity to
their mean image, and the threshold of the input-domain check). Its numbers are inline; the mean
image is a float32 ``.npy`` file beside the spec (``"mean_image"``, confined to the spec's folder
as weights are) with its ``"mean_image_sha256"``. It is read with ``allow_pickle=False`` when the
spec is loaded, after its size and digest are checked. A spec without it works as before: the
check is then not available.

Where it lives
--------------
This module is the one place to import the spec's names from; each concern has its own module:

* :mod:`nipype_xai.models.spec_json`: the JSON file (:class:`ModelSpec`, :func:`load_model_spec`,
  :func:`save_model_spec`), read and validated, the weights' path confined;
* :mod:`nipype_xai.models.build`: the architecture's trust boundary and the model
  (:data:`TRUSTED_ARCHITECTURE_MODULES`, :func:`load_model`, :func:`model_output_count`);
* :mod:`nipype_xai.models.weights`: the weights file read safely (:func:`weights_sha256`).
"""

from __future__ import annotations

# The parts' public names, re-exported: this module is the spec's documented entry point.
from . import build, spec_json
from .build import *  # noqa: F401,F403
from .spec_json import *  # noqa: F401,F403
from .weights import weights_sha256

__all__ = [*spec_json.__all__, *build.__all__, "weights_sha256"]
