"""``nipype-xai train-simulator`` and the simulator spec's trust boundary (a tiny atrophy cohort
on an 8 mm grid, one epoch: seconds)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from nipype_xai.cli.run import main
from nipype_xai.counterfactual import Simulator, SimulatorSettings
from nipype_xai.counterfactual.spec import (
    SimulatorSpecError,
    check_classifier,
    load_simulator,
    load_simulator_spec,
    save_simulator,
)
from nipype_xai.models import TinyCNN3D, load_model_spec, weights_sha256
from nipype_xai.synth import generate_cohort

TPL = "MNI152NLin2009aSym"
SHAPE = (24, 28, 24)


def write_classifier(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(TinyCNN3D(n_outputs=2, width=4).state_dict(), folder / "clf.pt")
    spec = {"name": "clf", "architecture": "nipype_xai.models.architectures:TinyCNN3D",
            "kwargs": {"n_outputs": 2, "width": 4}, "weights": "clf.pt",
            "input": {"space": TPL, "resolution_mm": 8, "shape": list(SHAPE),
                      "normalization": "zscore", "mask": "nonzero"},
            "outputs": ["control", "atrophy"], "task": "classification"}
    (folder / "clf.json").write_text(json.dumps(spec))
    return folder / "clf.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cf")
    cohort = generate_cohort(root / "cohort", "atrophy", 4, seed=11, resolution_mm=8.0,
                             progress=False)
    model = write_classifier(root / "model")
    argv = ["train-simulator", str(root / "sim"), "--model", str(model), "--cohort",
            str(cohort), "--epochs", "1", "--batch-size", "2", "--no-progress"]
    assert main(argv) == 0
    return root, cohort, model, argv


def test_train_simulator_writes_a_spec_that_loads(trained):
    root, cohort, model, _ = trained
    path = root / "sim" / "clf_simulator.json"
    spec = load_simulator_spec(path)
    assert spec.classifier_weights_sha256 == weights_sha256(root / "model" / "clf.pt")
    assert spec.classifier_outputs == ("control", "atrophy")
    assert spec.classifier_input["shape"] == list(SHAPE)
    record = spec.training
    assert record["cohort"]["task"] == "atrophy"
    assert record["cohort"]["to_template"] == "affine"  # the atrophy signal survives only this
    assert record["cohort"]["n_subjects"] == 4
    assert record["settings"]["epochs"] == 1
    assert set(record["final_losses"]) >= {"classification", "smoothness", "cycle", "magnitude"}
    assert record["seconds_training"] > 0
    simulator = load_simulator(spec, load_model_spec(model))
    assert isinstance(simulator, Simulator) and not simulator.training


def test_train_simulator_is_reproducible(trained, tmp_path):
    root, _, _, argv = trained
    again = list(argv)
    again[1] = str(tmp_path / "again")
    assert main(again) == 0
    assert (weights_sha256(tmp_path / "again" / "clf_simulator.pt")
            == weights_sha256(root / "sim" / "clf_simulator.pt"))
    other = again[:1] + [str(tmp_path / "other")] + again[2:] + ["--seed", "1"]
    assert main(other) == 0
    assert (weights_sha256(tmp_path / "other" / "clf_simulator.pt")
            != weights_sha256(root / "sim" / "clf_simulator.pt"))


def test_a_simulator_refuses_another_classifier(trained, tmp_path):
    root, _, _, _ = trained
    spec = load_simulator_spec(root / "sim" / "clf_simulator.json")
    retrained = load_model_spec(write_classifier(tmp_path / "retrained", seed=1))
    with pytest.raises(SimulatorSpecError, match="clf_simulator.json: trained for classifier "
                                                 "'clf' .* weights clf.pt differ"):
        check_classifier(spec, retrained)
    with pytest.raises(SimulatorSpecError, match="differ"):
        load_simulator(spec, retrained)


def _copy(trained, tmp_path) -> tuple[Path, dict]:
    root = trained[0]
    folder = tmp_path / "copy"
    shutil.copytree(root / "sim", folder)
    path = folder / "clf_simulator.json"
    return path, json.loads(path.read_text())


def test_simulator_weights_must_stay_in_the_spec_folder(trained, tmp_path):
    path, data = _copy(trained, tmp_path)
    shutil.copy(path.with_suffix(".pt"), tmp_path / "outside.pt")
    for weights in ("../outside.pt", str(tmp_path / "outside.pt"), "~/outside.pt"):
        path.write_text(json.dumps({**data, "weights": weights}))
        with pytest.raises(SimulatorSpecError, match="clf_simulator.json: 'weights'"):
            load_simulator_spec(path)


def test_simulator_weights_are_checked_and_never_unpickled(trained, tmp_path):
    path, data = _copy(trained, tmp_path)
    weights = path.with_suffix(".pt")
    state = torch.load(weights, weights_only=True)
    state["unet.final_conv.bias"] = state["unet.final_conv.bias"] + 1.0
    torch.save(state, weights)
    with pytest.raises(SimulatorSpecError, match="does not match weights_sha256"):
        load_simulator(path)

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    weights.write_bytes(pickle.dumps({"x": Payload()}))
    path.write_text(json.dumps({**data, "weights_sha256": weights_sha256(weights)}))
    with pytest.raises(SimulatorSpecError, match=r"torch.load\(weights_only=True\)"):
        load_simulator(path)


@pytest.mark.parametrize("change, message", [
    ({"format": "other"}, "not a simulator spec"),
    ({"simulator": {"n_classes": 2}}, "'simulator' must be an object with exactly the keys"),
    ({"weights_sha256": "abc"}, "'weights_sha256' must be 64 hexadecimal digits"),
    ({"n_squarings": 0}, "n_squarings must be a positive integer"),
])
def test_bad_simulator_specs_get_one_line(trained, tmp_path, change, message):
    path, data = _copy(trained, tmp_path)
    path.write_text(json.dumps({**data, **change}))
    with pytest.raises(SimulatorSpecError, match=message):
        load_simulator_spec(path)


def test_save_simulator_records_what_it_was_given(tmp_path):
    model = load_model_spec(write_classifier(tmp_path / "m"))
    settings = SimulatorSettings(features=(4, 4, 8, 8, 8, 4), downsample=1)
    torch.manual_seed(0)
    simulator = Simulator(features=settings.features, downsample=1)
    path = save_simulator(simulator, settings, model, tmp_path / "s", name="sim")
    spec = load_simulator_spec(path)
    assert spec.simulator_kwargs["downsample"] == 1
    loaded = load_simulator(spec, model)
    for (name, a), b in zip(simulator.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train-simulator", str(tmp_path / "out"), "--cohort", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--model" in err
    model = write_classifier(tmp_path / "m")
    assert main(["train-simulator", str(tmp_path / "out"), "--model", str(model),
                 "--cohort", str(tmp_path)]) == 1
    assert "not a synthetic cohort" in capsys.readouterr().err


def test_train_simulator_help(capsys):
    assert main(["train-simulator", "--help"]) == 0
    out = capsys.readouterr().out
    assert "nipype-xai train-simulator" in out and "--weight-cycle" in out
