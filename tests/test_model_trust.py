"""The trust boundary of model specs (SPEC §10): which architectures are imported, where weights may
live, and what a weights file that is not a state dict gives."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import nipype_xai.models.build as build_module
import nipype_xai.models.spec as spec_module
from nipype_xai.interfaces import Attribution, ModelInference
from nipype_xai.interfaces.baselines import BaselineMaps
from nipype_xai.interfaces.grids import ModelGridReference
from nipype_xai.models import ModelSpecError, TinyCNN3D, load_model, load_model_spec
from nipype_xai.models.spec import model_output_count

TINY = "nipype_xai.models.architectures:TinyCNN3D"
AFFINE_4MM = np.array([[4.0, 0, 0, -32], [0, 4, 0, -40], [0, 0, 4, -28], [0, 0, 0, 1]])


def write_weights(path: Path) -> Path:
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(TinyCNN3D(n_outputs=2, width=4).state_dict(), path)
    return path


def write_spec(folder: Path, name: str = "model", *, weights: str = "weights.pt",
               architecture: str = TINY, kwargs=None, **extra) -> Path:
    """A spec of a width-4 TinyCNN3D (or a class with its state dict) on a 12³ grid. Weights are
    written at ``folder / weights`` only when that path is inside ``folder`` and absent."""
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / weights
    if not weights.startswith(("~", "/", "..")) and not local.exists() and not local.is_symlink():
        write_weights(local)
    data = {
        "architecture": architecture,
        "kwargs": {"n_outputs": 2, "width": 4} if kwargs is None else kwargs,
        "weights": weights,
        "input": {"space": "MNI152NLin2009aSym", "resolution_mm": 4, "shape": [12, 12, 12],
                  "normalization": "zscore", "mask": "nonzero"},
        "outputs": ["control", "lesion"],
        "task": "classification",
        **extra,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def write_user_module(folder: Path, name: str) -> Path:
    """``folder/<name>.py``: a TinyCNN3D subclass ``Net``; importing it leaves ``<name>.imported``."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{name}.imported"
    (folder / f"{name}.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("imported")

        from nipype_xai.models.architectures import TinyCNN3D

        class Net(TinyCNN3D):
            pass
    """))
    return marker


@pytest.fixture
def forget_modules():
    """Remove the named test modules from sys.modules afterwards (each test imports its own)."""
    names: list[str] = []
    yield names
    for module in list(sys.modules):
        if module.partition(".")[0] in names:
            del sys.modules[module]


def assert_one_line(message: str, spec_name: str = "model.json") -> None:
    assert "\n" not in message
    assert message.startswith(f"{spec_name}: ")
    assert "Traceback" not in message


# ------------------------------------------------------------------------------------------
# Architectures: the allow-list, checked by name before anything is imported


def test_the_allow_list_is_one_tuple_of_three_packages():
    assert spec_module.TRUSTED_ARCHITECTURE_MODULES == (
        "nipype_xai", "monai.networks.nets", "torchvision.models",
    )


def test_a_module_outside_the_allow_list_is_never_imported(tmp_path, monkeypatch, forget_modules):
    forget_modules.append("labnet_untrusted")
    marker = write_user_module(tmp_path / "lib", "labnet_untrusted")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    path = write_spec(tmp_path / "spec", architecture="labnet_untrusted:Net")

    for call in (lambda: load_model(path),
                 lambda: model_output_count(load_model_spec(path))):
        with pytest.raises(ModelSpecError) as info:
            call()
        message = str(info.value)
        assert_one_line(message)
        assert message == (
            "model.json: architecture 'labnet_untrusted:Net' is outside the packages nipype-xai "
            "imports by default (nipype_xai, monai.networks.nets, torchvision.models); if you "
            "trust this model spec's code, pass --trust-model-code (Python: trust_code=True)"
        )
    assert not marker.exists()
    assert "labnet_untrusted" not in sys.modules


def test_this_is_not_imported(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "this", raising=False)
    path = write_spec(tmp_path, architecture="this:Foo")
    with pytest.raises(ModelSpecError, match=r"^model\.json: architecture 'this:Foo' is outside"):
        load_model(path)
    assert "this" not in sys.modules


@pytest.mark.parametrize("architecture", [
    "monai:Foo",                       # the package, not its networks
    "monai.networks:Foo",
    "monai.networks.netsX:Foo",        # a prefix is not a parent package
    "torchvision:Foo",
    "nipype_xaiX.models:Foo",
    "torch.nn:Conv3d",
])
def test_only_the_listed_packages_and_their_submodules_pass(tmp_path, architecture):
    path = write_spec(tmp_path, architecture=architecture)
    with pytest.raises(ModelSpecError, match=r"^model\.json: architecture .* is outside the "
                                             r"packages nipype-xai imports by default"):
        load_model(path)


def test_allowed_names_still_reach_the_import(tmp_path):
    # torchvision.models is allowed: the spec fails later, on what the name points to.
    path = write_spec(tmp_path, architecture="torchvision.models:resnet18")
    with pytest.raises(ModelSpecError, match=r"^model\.json: .*not a torch\.nn\.Module class"):
        load_model(path)
    assert isinstance(load_model(write_spec(tmp_path, name="tiny")), TinyCNN3D)


def test_a_brainnet_py_in_the_working_directory_is_not_imported(tmp_path, monkeypatch,
                                                                 forget_modules):
    forget_modules.append("brainnet")
    marker = write_user_module(tmp_path, "brainnet")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend("")  # as `python -c` and the interactive interpreter have it
    path = write_spec(tmp_path / "spec", architecture="brainnet:Net")
    with pytest.raises(ModelSpecError, match=r"^model\.json: architecture 'brainnet:Net' is "
                                             r"outside the packages"):
        load_model(path)
    assert not marker.exists()
    assert "brainnet" not in sys.modules


def test_a_class_re_exported_from_an_allowed_module_is_refused(tmp_path):
    # nipype_xai.models.architectures does `from torch import nn`: the name passes the allow-list,
    # but the class is defined in torch.nn, which does not.
    path = write_spec(tmp_path, architecture="nipype_xai.models.architectures:nn.Conv3d",
                      kwargs={"in_channels": 1, "out_channels": 2, "kernel_size": 1})
    with pytest.raises(ModelSpecError) as info:
        load_model(path)
    message = str(info.value)
    assert_one_line(message)
    assert "defined in 'torch.nn.modules.conv'" in message
    assert "--trust-model-code" in message
    # With trust the class is used (and then the weights do not fit it).
    pattern = r"^model\.json: weights file weights\.pt does not fit"
    with pytest.raises(ModelSpecError, match=pattern):
        load_model(path, trust_code=True)


def test_medicalnet_perceptual_similarity_is_refused_before_construction(tmp_path, monkeypatch):
    # Its constructor calls torch.hub.load(..., trust_repo=True): a GitHub repository's code.
    def no_hub(*args, **kwargs):
        raise AssertionError("torch.hub.load was called")

    monkeypatch.setattr(torch.hub, "load", no_hub)
    path = write_spec(tmp_path, kwargs={},
                      architecture="monai.losses.perceptual:MedicalNetPerceptualSimilarity")
    with pytest.raises(ModelSpecError) as info:
        load_model(path)
    message = str(info.value)
    assert_one_line(message)
    assert "is outside the packages nipype-xai imports by default" in message


def test_trust_code_imports_a_user_module_from_sys_path(tmp_path, monkeypatch, forget_modules):
    forget_modules.append("labnet_trusted")
    marker = write_user_module(tmp_path / "lib", "labnet_trusted")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    path = write_spec(tmp_path / "spec", architecture="labnet_trusted:Net")

    model = load_model(path, trust_code=True)
    assert type(model).__module__ == "labnet_trusted"
    assert marker.exists()
    assert model_output_count(load_model_spec(path), trust_code=True) == 2


# ------------------------------------------------------------------------------------------
# Architectures: an allowed package must come from its installed location


@pytest.fixture
def shadowed_package(tmp_path, monkeypatch, forget_modules):
    """``shadowpkg_xai`` installed under tmp/site (an absolute sys.path entry, and added to the
    allow-list) and a shadow copy in tmp/cwd whose import leaves a marker."""
    forget_modules.append("shadowpkg_xai")
    # The allow-list is read where the trust boundary is enforced (models.build).
    monkeypatch.setattr(build_module, "TRUSTED_ARCHITECTURE_MODULES",
                        (*build_module.TRUSTED_ARCHITECTURE_MODULES, "shadowpkg_xai"))
    installed = tmp_path / "site" / "shadowpkg_xai"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    (installed / "nets.py").write_text(
        "from nipype_xai.models.architectures import TinyCNN3D\n\nclass Net(TinyCNN3D):\n    pass\n"
    )
    shadow = tmp_path / "cwd" / "shadowpkg_xai"
    shadow.mkdir(parents=True)
    marker = tmp_path / "shadow.imported"
    (shadow / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (shadow / "nets.py").write_text(
        "from nipype_xai.models.architectures import TinyCNN3D\n\nclass Net(TinyCNN3D):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = write_spec(tmp_path / "spec", architecture="shadowpkg_xai.nets:Net")
    return spec, marker


@pytest.mark.parametrize("cwd_entry", ["", "absolute"])
def test_a_package_shadowed_from_the_working_directory_is_refused(tmp_path, monkeypatch,
                                                                  shadowed_package, cwd_entry):
    spec, marker = shadowed_package
    monkeypatch.chdir(tmp_path / "cwd")
    # '' for `python -c`, the folder itself for `python -m`: both put the cwd first on sys.path.
    monkeypatch.syspath_prepend("" if cwd_entry == "" else str(tmp_path / "cwd"))
    with pytest.raises(ModelSpecError) as info:
        load_model(spec)
    message = str(info.value)
    assert_one_line(message)
    assert "current directory" in message
    assert str(tmp_path / "site" / "shadowpkg_xai") in message
    assert not marker.exists()
    assert "shadowpkg_xai" not in sys.modules

    # From another folder the installed copy is found and used. (An absolute entry is trusted like
    # any install location once it is no longer the working directory: only '' follows the cwd.)
    if cwd_entry != "":
        return
    monkeypatch.chdir(tmp_path)
    model = load_model(spec)
    assert type(model).__module__ == "shadowpkg_xai.nets"
    assert sys.modules["shadowpkg_xai"].__file__ == str(tmp_path / "site" / "shadowpkg_xai" /
                                                        "__init__.py")
    assert not marker.exists()


def test_a_package_found_only_in_the_working_directory_is_refused(tmp_path, monkeypatch,
                                                                  shadowed_package):
    spec, marker = shadowed_package
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "site")])
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.syspath_prepend("")
    with pytest.raises(ModelSpecError, match=r"^model\.json: .*'shadowpkg_xai' is not installed"):
        load_model(spec)
    assert not marker.exists()


def test_a_monai_folder_in_the_working_directory_is_not_imported(tmp_path):
    # A real `python -c` in a folder holding a fake monai package: '' is first on its sys.path.
    marker = tmp_path / "fake_monai.imported"
    fake = tmp_path / "monai" / "networks" / "nets"
    fake.mkdir(parents=True)
    (tmp_path / "monai" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (tmp_path / "monai" / "networks" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("import torch\nclass DenseNet(torch.nn.Module):\n    pass\n")
    spec = write_spec(tmp_path / "spec", architecture="monai.networks.nets:DenseNet", kwargs={})
    script = textwrap.dedent(f"""
        import sys
        from nipype_xai.models import ModelSpecError, load_model
        try:
            load_model({str(spec)!r})
        except ModelSpecError as error:
            print(error)
        print("monai" in sys.modules)
    """)
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    message, imported = result.stdout.strip().splitlines()[-2:]
    assert message.startswith("model.json: architecture 'monai.networks.nets:DenseNet'")
    assert "current directory" in message
    assert imported == "False"
    assert not marker.exists()


# ------------------------------------------------------------------------------------------
# Weights: inside the spec's folder unless opted out


def _outside_weights(tmp_path: Path, monkeypatch, kind: str) -> tuple[Path, Path]:
    """A spec in tmp/spec whose weights are outside that folder: (spec path, weights file)."""
    folder = tmp_path / "spec"
    if kind == "parent":
        weights = write_weights(tmp_path / "w.pt")
        return write_spec(folder, weights="../w.pt"), weights
    if kind == "home":
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        weights = write_weights(tmp_path / "home" / "w.pt")
        return write_spec(folder, weights="~/w.pt"), weights
    if kind == "absolute":
        weights = write_weights(tmp_path / "elsewhere" / "w.pt")
        return write_spec(folder, weights=str(weights)), weights
    if kind == "symlink":
        weights = write_weights(tmp_path / "elsewhere" / "w.pt")
        folder.mkdir(parents=True)
        (folder / "link.pt").symlink_to(weights)
        return write_spec(folder, weights="link.pt"), weights
    if kind == "dotdot_inside_out":
        weights = write_weights(tmp_path / "w.pt")
        (folder / "sub").mkdir(parents=True)
        return write_spec(folder, weights="sub/../../w.pt"), weights
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["parent", "home", "absolute", "symlink", "dotdot_inside_out"])
def test_weights_outside_the_spec_folder_are_refused_unless_allowed(tmp_path, monkeypatch, kind):
    path, weights = _outside_weights(tmp_path, monkeypatch, kind)
    for call in (lambda: load_model_spec(path), lambda: load_model(path)):
        with pytest.raises(ModelSpecError) as info:
            call()
        message = str(info.value)
        assert_one_line(message)
        assert "outside" in message or "absolute" in message or "home" in message
        assert "--allow-external-weights" in message
        assert "external_weights=True" in message

    spec = load_model_spec(path, external_weights=True)
    assert os.path.realpath(spec.weights) == os.path.realpath(weights)
    assert isinstance(load_model(path, external_weights=True), TinyCNN3D)


def test_weights_inside_the_spec_folder_are_accepted(tmp_path):
    folder = tmp_path / "real"
    write_weights(folder / "sub" / "w.pt")
    (folder / "link.pt").parent.mkdir(parents=True, exist_ok=True)
    (folder / "link.pt").symlink_to(folder / "sub" / "w.pt")
    (tmp_path / "alias").symlink_to(folder)  # the spec's folder reached through a link
    for weights in ("sub/w.pt", "./sub/../sub/w.pt", "link.pt"):
        path = write_spec(tmp_path / "alias", weights=weights)
        assert isinstance(load_model(path), TinyCNN3D)


# ------------------------------------------------------------------------------------------
# Weights: no hash oracle, and a clear error for files that are not weights


def test_a_wrong_sha256_does_not_print_the_files_hash(tmp_path):
    write_weights(tmp_path / "weights.pt")
    actual = hashlib.sha256((tmp_path / "weights.pt").read_bytes()).hexdigest()
    path = write_spec(tmp_path, weights_sha256="0" * 64)
    with pytest.raises(ModelSpecError) as info:
        load_model(path)
    message = str(info.value)
    assert_one_line(message)
    assert actual not in message
    assert "weights file weights.pt does not match weights_sha256 in the spec" in message


def _text(path: Path) -> None:
    path.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n")


def _zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a tensor")


GARBAGE = {
    "passwd": _text,
    "empty": lambda path: path.write_bytes(b""),
    "random": lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096)),
    "random_short": lambda path: path.write_bytes(np.random.default_rng(1).bytes(100)),
    "json": lambda path: path.write_text('{"weights": [1, 2, 3]}'),
    "zip": _zip,
    "folder": lambda path: path.mkdir(),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_a_file_that_is_not_weights_gives_a_one_line_error(tmp_path, kind):
    GARBAGE[kind](tmp_path / "weights.pt")
    path = write_spec(tmp_path)
    with pytest.raises(ModelSpecError) as info:
        load_model(path)
    message = str(info.value)
    assert_one_line(message)
    assert "weights.pt" in message
    if kind == "folder":
        assert "is a folder, not a file" in message


@pytest.mark.skipif(not Path("/etc/passwd").is_file(), reason="no /etc/passwd")
def test_etc_passwd_as_weights(tmp_path):
    path = write_spec(tmp_path, weights="/etc/passwd")
    with pytest.raises(ModelSpecError, match=r"^model\.json: .*--allow-external-weights"):
        load_model(path)
    with pytest.raises(ModelSpecError) as info:
        load_model(path, external_weights=True)
    message = str(info.value)
    assert_one_line(message)
    assert "passwd" in message
    assert "root" not in message


# ------------------------------------------------------------------------------------------
# Interfaces: trust_model_code and external_weights reach the core


@pytest.mark.parametrize("interface", [ModelInference, Attribution, BaselineMaps,
                                       ModelGridReference])
def test_interfaces_have_the_two_trust_inputs(interface):
    inputs = interface.input_spec()
    for name in ("trust_model_code", "external_weights"):
        assert getattr(inputs, name) is False
        assert inputs.traits()[name].nohash


def _t1w(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = np.zeros((16, 16, 16), np.float32)
    data[3:13, 3:13, 3:13] = rng.normal(100, 10, (10, 10, 10))
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE_4MM), path)
    return path


def test_model_inference_needs_trust_model_code_for_a_user_architecture(tmp_path, monkeypatch,
                                                                        forget_modules):
    forget_modules.append("labnet_interface")
    write_user_module(tmp_path / "lib", "labnet_interface")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    spec = write_spec(tmp_path / "spec", architecture="labnet_interface:Net")
    in_file = _t1w(tmp_path)
    (tmp_path / "run").mkdir()

    with pytest.raises(ModelSpecError, match=r"^model\.json: architecture 'labnet_interface:Net' "
                                             r"is outside .*--trust-model-code"):
        ModelInference(in_file=str(in_file), model_spec=str(spec)).run(cwd=str(tmp_path / "run"))
    assert "labnet_interface" not in sys.modules

    result = ModelInference(in_file=str(in_file), model_spec=str(spec),
                            trust_model_code=True).run(cwd=str(tmp_path / "run"))
    assert Path(result.outputs.out_tsv).is_file()
    result = Attribution(in_file=str(in_file), model_spec=str(spec), methods=["gradient"],
                         trust_model_code=True).run(cwd=str(tmp_path / "run"))
    assert len(result.outputs.out_files) == 1


def test_interfaces_need_external_weights_for_weights_outside_the_spec_folder(tmp_path):
    write_weights(tmp_path / "w.pt")
    spec = write_spec(tmp_path / "spec", weights="../w.pt")
    in_file = _t1w(tmp_path)
    (tmp_path / "run").mkdir()
    template = tmp_path / "tpl.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(2).random((16, 16, 16), np.float32) * 100,
                             AFFINE_4MM), template)

    nodes = [
        lambda **kw: ModelInference(in_file=str(in_file), model_spec=str(spec), **kw),
        lambda **kw: Attribution(in_file=str(in_file), model_spec=str(spec),
                                 methods=["gradient"], **kw),
        lambda **kw: BaselineMaps(in_file=str(in_file), model_spec=str(spec),
                                  baselines=["sobel"], **kw),
        lambda **kw: ModelGridReference(template=str(template), model_spec=str(spec), **kw),
    ]
    for make in nodes:
        with pytest.raises(ModelSpecError, match=r"^model\.json: .*--allow-external-weights"):
            make().run(cwd=str(tmp_path / "run"))
        make(external_weights=True).run(cwd=str(tmp_path / "run"))
    # The weights file is still tracked for Nipype's cache when it lies outside.
    assert ModelInference(model_spec=str(spec)).inputs.model_weights == str(tmp_path / "w.pt")
