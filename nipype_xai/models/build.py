"""Building a model spec's architecture: the trust boundary for its code, then the model.

Which modules a spec's ``"package.module:Class"`` may be imported from, and from where, is
described in :mod:`nipype_xai.models.spec` (the trust boundary, SPEC §10): the name is checked
before anything is imported (:func:`import_architecture`). :func:`load_model` builds the class
with the spec's kwargs and loads its weights (:mod:`nipype_xai.models.weights`);
:func:`model_output_count` and :func:`check_output_count` compare the model's outputs with the
spec's ``outputs``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec
from typing import Any, Optional, Union

import torch
from torch import nn

from .spec_json import ModelSpec, ModelSpecError, PathLike, _one_line, load_model_spec
from .weights import check_weights_file, load_weights

__all__ = [
    "TRUSTED_ARCHITECTURE_MODULES",
    "build_architecture",
    "check_output_count",
    "import_architecture",
    "load_model",
    "model_output_count",
]

#: Modules a spec's architecture may come from without ``trust_code`` (see
#: :mod:`nipype_xai.models.spec`): a module is allowed when its dotted name is an entry or starts
#: with ``entry + "."``. Each is code the user installed on purpose whose network classes build
#: from their arguments alone.
TRUSTED_ARCHITECTURE_MODULES = (
    # Our reference architectures (TinyCNN3D, SFCN, MonaiResNet): the bundled model and the
    # benchmark's specs name them.
    "nipype_xai",
    # MONAI's network zoo (DenseNet, ResNet, ...), the MONAI classes SPEC §4 names. Not MONAI as a
    # whole: monai.losses.perceptual builds its networks with torch.hub.load(..., trust_repo=True)
    # (a GitHub repository's code) and monai.bundle instantiates any dotted path. A few nets fetch
    # *weights* when given pretrained=True; those are read with weights_only=True.
    "monai.networks.nets",
    # torchvision's networks (e.g. the 3D video ResNets). Its downloads of pretrained weights live
    # in builder functions, which are not classes and so cannot be a spec's architecture.
    "torchvision.models",
)

_TRUST_HINT = (
    "if you trust this model spec's code, pass --trust-model-code (Python: trust_code=True)"
)


def _is_trusted_module(module_name: str) -> bool:
    return any(module_name == entry or module_name.startswith(entry + ".")
               for entry in TRUSTED_ARCHITECTURE_MODULES)


def _location(module_spec: Optional[ModuleSpec]) -> Optional[str]:
    """Where a top-level module's code lies: a package's folder(s), or a module's file."""
    if module_spec is None:
        return None
    if module_spec.submodule_search_locations:
        return os.pathsep.join(os.path.realpath(p) for p in module_spec.submodule_search_locations)
    if module_spec.origin and module_spec.has_location:
        return os.path.realpath(module_spec.origin)
    return module_spec.origin  # "built-in", "frozen"


def _installed_spec(top: str) -> Optional[ModuleSpec]:
    """The import system's spec of the top-level module ``top`` with the current directory and
    relative ``sys.path`` entries left out. Runs no module code."""
    if top == __name__.partition(".")[0]:
        # nipype_xai itself: the code running this check is the installed package by definition
        # (also an editable install whose folder is the working directory).
        return sys.modules[top].__spec__
    cwd = os.path.realpath(os.getcwd())
    path = [entry for entry in sys.path
            if isinstance(entry, str) and os.path.isabs(entry) and os.path.realpath(entry) != cwd]
    # As importlib.util.find_spec, but every meta-path finder gets the filtered list as its path
    # (PathFinder searches it instead of sys.path; finders for fixed locations, such as editable
    # installs' mappings, ignore it).
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        found = find_spec(top, path)
        if found is not None:
            return found
    return None


def _check_trusted_module(spec: ModelSpec, module_name: str) -> None:
    """Raise unless ``module_name``'s top-level package would be imported from where it is
    installed (not the current directory or a relative sys.path entry). Runs no module code."""
    top = module_name.partition(".")[0]
    installed = _location(_installed_spec(top))
    if installed is None:
        raise ModelSpecError(
            f"{spec.source}: architecture {spec.architecture!r}: package {top!r} is not installed "
            f"(nipype-xai does not import it from the current directory or a relative sys.path "
            f"entry); install it, or, {_TRUST_HINT}"
        )
    try:  # what an import would give: the module already imported, or the first on sys.path
        found = _location(importlib.util.find_spec(top))
    except (ValueError, ImportError):
        found = None
    if found != installed:
        raise ModelSpecError(
            f"{spec.source}: architecture {spec.architecture!r}: package {top!r} would be imported "
            f"from {found}, not from where it is installed ({installed}); nipype-xai never imports "
            f"an architecture from the current directory or a relative sys.path entry: run from "
            f"another folder, or, {_TRUST_HINT}"
        )


def import_architecture(spec: ModelSpec, *, trust_code: bool = False) -> type:
    """The spec's architecture class, imported only inside the trust boundary
    (:mod:`nipype_xai.models.spec`).

    Raises
    ------
    ModelSpecError
        The module is outside :data:`TRUSTED_ARCHITECTURE_MODULES` or would not come from where
        it is installed (without ``trust_code``), cannot be imported, or has no such
        ``torch.nn.Module`` class.
    """
    module_name, _, qualname = spec.architecture.partition(":")
    if not trust_code:
        # By name first: nothing is imported for a module outside the allow-list.
        if not _is_trusted_module(module_name):
            raise ModelSpecError(
                f"{spec.source}: architecture {spec.architecture!r} is outside the packages "
                f"nipype-xai imports by default ({', '.join(TRUSTED_ARCHITECTURE_MODULES)}); "
                f"{_TRUST_HINT}"
            )
        _check_trusted_module(spec, module_name)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as error:  # an import can fail with anything the module raises
        raise ModelSpecError(
            f"{spec.source}: architecture {spec.architecture!r}: cannot import module "
            f"{module_name!r} ({type(error).__name__}: {_one_line(str(error))})"
        ) from error
    for attribute in qualname.split("."):
        try:
            obj = getattr(obj, attribute)
        except AttributeError:
            raise ModelSpecError(
                f"{spec.source}: architecture {spec.architecture!r}: module {module_name!r} has no "
                f"class {qualname!r}"
            ) from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ModelSpecError(
            f"{spec.source}: architecture {spec.architecture!r} is not a torch.nn.Module class"
        )
    if not trust_code:
        # A class re-exported by an allowed module (`from torch import nn`, a user's class
        # imported into a package) is judged by where it is defined.
        defined_in = getattr(obj, "__module__", None) or "?"
        if not _is_trusted_module(defined_in):
            raise ModelSpecError(
                f"{spec.source}: architecture {spec.architecture!r} is a class defined in "
                f"{defined_in!r}, outside the packages nipype-xai imports by default "
                f"({', '.join(TRUSTED_ARCHITECTURE_MODULES)}); {_TRUST_HINT}"
            )
        _check_trusted_module(spec, defined_in)
    return obj


def _instantiate(spec: ModelSpec, cls: type) -> nn.Module:
    try:
        return cls(**spec.kwargs)
    except Exception as error:
        raise ModelSpecError(
            f"{spec.source}: cannot build {spec.architecture} with kwargs {dict(spec.kwargs)} "
            f"({type(error).__name__}: {_one_line(str(error))})"
        ) from error


def build_architecture(spec: ModelSpec, *, trust_code: bool = False) -> nn.Module:
    """A freshly initialised instance of the spec's architecture (no weights read).

    ``trust_code`` imports the architecture even from outside :data:`TRUSTED_ARCHITECTURE_MODULES`
    (see :mod:`nipype_xai.models.spec`): only for a spec whose code you trust.
    """
    return _instantiate(spec, import_architecture(spec, trust_code=trust_code))



def model_output_count(
    spec: ModelSpec, model: Optional[nn.Module] = None, *, trust_code: bool = False
) -> int:
    """Number of outputs the spec's architecture produces on the spec's input shape.

    The forward pass runs on PyTorch's ``meta`` device (shapes only, no memory, no compute) with a
    fresh instance of the class; when the class cannot be built there, ``model`` (or a new CPU
    instance) runs on a zero volume instead.

    Parameters
    ----------
    spec
        The model spec.
    model
        An instance of the architecture to fall back on.
    trust_code
        Import the architecture even from outside :data:`TRUSTED_ARCHITECTURE_MODULES` (see the
        trust boundary in :mod:`nipype_xai.models.spec`): only for a spec whose code you trust.

    Raises
    ------
    ModelSpecError
        The architecture is outside the trust boundary, or cannot run on the spec's input shape.
    """
    cls = import_architecture(spec, trust_code=trust_code)
    shape = (1, spec.input.channels, *spec.input.shape)
    try:
        with torch.device("meta"):
            probe = cls(**spec.kwargs)
        probe.eval()
        with torch.no_grad():
            output = probe(torch.empty(shape, device="meta"))
    except Exception:
        # Some classes create tensors on an explicit device or use data-dependent operations that
        # meta tensors cannot run: fall back to a real (slower) forward pass.
        probe = model if model is not None else _instantiate(spec, cls)
        device = next((p.device for p in probe.parameters()), torch.device("cpu"))
        was_training = probe.training
        probe.eval()
        try:
            with torch.no_grad():
                output = probe(torch.zeros(shape, device=device))
        except Exception as error:
            raise ModelSpecError(
                f"{spec.source}: {spec.architecture} cannot run on the spec's input shape "
                f"{shape} ({type(error).__name__}: {_one_line(str(error))})"
            ) from error
        finally:
            probe.train(was_training)
    if isinstance(output, (tuple, list)):
        output = output[0]
    return int(output.reshape(output.shape[0], -1).shape[1])


def check_output_count(spec: ModelSpec, n_outputs: int) -> None:
    """Raise :class:`ModelSpecError` unless a model with ``n_outputs`` outputs fits ``spec.outputs``.

    They fit when the counts are equal, or for a single-logit binary classifier with two names.
    """
    if n_outputs == len(spec.outputs):
        return
    if spec.task == "classification" and n_outputs == 1 and len(spec.outputs) == 2:
        return  # binary classifier with one logit: it scores outputs[1]
    hint = ""
    if spec.task == "classification" and n_outputs == 1:
        hint = " (a single-logit binary classifier lists two names: [negative, positive])"
    raise ModelSpecError(
        f"{spec.source}: the model has {n_outputs} output(s) but 'outputs' names "
        f"{len(spec.outputs)}: {list(spec.outputs)}{hint}"
    )


def load_model(
    spec_or_path: Union[ModelSpec, PathLike],
    device: Union[str, torch.device] = "cpu",
    *,
    check_outputs: bool = True,
    trust_code: bool = False,
    external_weights: bool = False,
) -> nn.Module:
    """Build the model a spec describes, load its weights safely, and put it in eval mode.

    Parameters
    ----------
    spec_or_path
        A :class:`ModelSpec` or the path of its JSON file.
    device
        Where the model and its weights go (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    check_outputs
        Check the number of outputs against ``outputs`` with a shape-only pass
        (:func:`model_output_count`). Its first use in a process costs about two seconds of
        imports (PyTorch's meta-tensor decompositions); callers that run the model right away can
        skip it and check the real output with :func:`check_output_count` instead, as
        :func:`nipype_xai.models.inference.predict` does.
    trust_code
        Import the architecture even from outside :data:`TRUSTED_ARCHITECTURE_MODULES` or from the
        current directory (see :mod:`nipype_xai.models.spec`): only for a spec whose code you trust.
    external_weights
        When ``spec_or_path`` is a path: accept weights outside the spec's folder (see
        :func:`~nipype_xai.models.spec.load_model_spec`). A :class:`ModelSpec` is used as it was
        parsed.

    Returns
    -------
    torch.nn.Module
        The model in eval mode on ``device``.

    Raises
    ------
    ModelSpecError
        The architecture is outside the trust boundary (without ``trust_code``), or its weights
        outside the spec's folder (without ``external_weights``); the class cannot be imported
        or built; the weights file is missing, not a file, corrupt, differs from
        ``weights_sha256``, holds pickled objects that ``weights_only=True`` refuses, or does not
        fit the architecture (the message names the tensor); or the number of outputs differs from
        ``outputs``. Every message names the spec file.
    """
    spec = (spec_or_path if isinstance(spec_or_path, ModelSpec)
            else load_model_spec(spec_or_path, external_weights=external_weights))
    # The trust boundary first: no weights file is read for a spec whose code is refused.
    cls = import_architecture(spec, trust_code=trust_code)
    check_weights_file(spec)
    model = _instantiate(spec, cls)
    load_weights(spec, model)
    model = model.to(device).eval()
    if check_outputs:
        check_output_count(spec, model_output_count(spec, model, trust_code=trust_code))
    return model
