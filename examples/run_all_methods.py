"""Run every attribution method on a synthetic brain through the ``Attribution`` interface.

Self-contained: it makes brain-like volumes (an ellipsoid "brain" at 4 mm, some with a bright
spherical "lesion"), trains ``TinyCNN3D`` for a few seconds to tell volumes with a lesion from
volumes without, writes the model spec and weights, and runs each method of ``available_methods()``
on one subject with a lesion. The model works on an 8 mm grid, so every map also goes through the
resampling to the model grid and back onto the subject's 4 mm grid. For each method it prints the
runtime, the range of the map and the share of the map's absolute mass that falls inside the lesion
(what a good explanation should concentrate on).

Usage::

    python examples/run_all_methods.py [OUTPUT_DIR | --out DIR] [--train-steps N] [--methods m1 ...]

``OUTPUT_DIR`` defaults to a new temporary folder (printed): nothing is written into the
repository. Under a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from nipype_xai.attribution import available_methods
from nipype_xai.images import save_image
from nipype_xai.interfaces import Attribution
from nipype_xai.models import (
    InputSpec,
    ModelSpec,
    TinyCNN3D,
    load_model_spec,
    save_model_spec,
    to_model_grid,
)

SHAPE = (40, 48, 40)  # 160 x 192 x 160 mm at 4 mm: the field of view of an MNI brain
VOXEL_MM = 4.0
MODEL_SHAPE = (20, 24, 20)  # the same field of view on the model's 8 mm grid
MODEL_VOXEL_MM = 8.0
LESION_RADIUS_MM = 16.0


def grid_affine() -> np.ndarray:
    """RAS affine at 4 mm with world (0, 0, 0) at the centre of the grid."""
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -VOXEL_MM * (np.asarray(SHAPE) - 1) / 2
    return affine


def world_coordinates(affine: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    return nib.affines.apply_affine(affine, ijk)


def brain_volume(
    rng: np.random.Generator, world: np.ndarray, lesion_at: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """A skull-stripped-looking volume and its lesion mask.

    An ellipsoid brain whose size varies per subject, darker "grey matter" rim, smooth bias field,
    noise; the lesion is a bright sphere. Returns (intensities, lesion mask).
    """
    radii = np.array([66.0, 82.0, 62.0]) * rng.uniform(0.92, 1.05)
    radial = np.sqrt((((world - rng.normal(0, 2, 3)) / radii) ** 2).sum(-1))
    brain = radial < 1
    intensity = np.where(radial > 0.8, 60.0, 100.0)  # grey rim, white core
    bias = 1 + 0.1 * np.sin(world[..., 0] / 40 + rng.uniform(0, 6)) * np.cos(world[..., 1] / 50)
    data = (intensity * bias + rng.normal(0, 6, SHAPE)) * brain
    lesion = np.zeros(SHAPE, dtype=bool)
    if lesion_at is not None:
        lesion = np.linalg.norm(world - lesion_at, axis=-1) < LESION_RADIUS_MM
        data[lesion & brain] += 70.0
    return data.astype(np.float32), lesion & brain


def random_lesion_site(rng: np.random.Generator) -> np.ndarray:
    """A lesion centre well inside the brain (white matter)."""
    return rng.uniform([-35, -45, -25], [35, 45, 30])


def train_model(
    spec: ModelSpec, steps: int, n_subjects: int = 96, seed: int = 0
) -> tuple[TinyCNN3D, float]:
    """Train TinyCNN3D on synthetic subjects, half of them with a lesion (a few seconds).

    Returns the model (eval mode) and its accuracy on 32 new subjects.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    affine = grid_affine()
    world = world_coordinates(affine)

    def cohort(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 2
        volumes = []
        for label in labels:
            data, _ = brain_volume(rng, world, random_lesion_site(rng) if label else None)
            # Through the same preprocessing as at inference, so the model sees what it will see.
            volumes.append(to_model_grid(nib.Nifti1Image(data, affine), spec)[0])
        return torch.cat(volumes), labels

    x_train, y_train = cohort(n_subjects)
    model = TinyCNN3D(**spec.kwargs)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        batch = torch.randperm(n_subjects)[:16]
        loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    x_test, y_test = cohort(32)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "output_dir", nargs="?", type=Path, default=None,
        help="where the model, the subject and the maps go (default: a new temporary folder)",
    )
    parser.add_argument("--out", dest="output_dir_option", type=Path, metavar="DIR",
                        help="the same as OUTPUT_DIR")
    parser.add_argument("--train-steps", type=int, default=150, help="training steps (batch 16)")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method")
    args = parser.parse_args(argv)
    given = args.output_dir or args.output_dir_option
    out = (Path(given) if given else
           Path(tempfile.mkdtemp(prefix="nipype-xai-run_all_methods-"))).absolute()
    print(f"output: {out}")
    (out / "maps").mkdir(parents=True, exist_ok=True)

    # The model spec: an 8 mm grid over the images' field of view, z-scored over the brain.
    spec = ModelSpec(
        architecture="nipype_xai.models.architectures:TinyCNN3D",
        kwargs={"in_channels": 1, "n_outputs": 2, "width": 8},
        weights=out / "tinycnn3d_lesion.pt",
        input=InputSpec(
            "MNI152NLin2009aSym", (MODEL_VOXEL_MM,) * 3, MODEL_SHAPE, "zscore", "nonzero"
        ),
        outputs=("control", "lesion"),
        task="classification",
        name="tinyLesion",
    )
    start = time.perf_counter()
    model, accuracy = train_model(spec, args.train_steps)
    torch.save(model.state_dict(), spec.weights)
    spec_path = save_model_spec(spec, out / "tinycnn3d_lesion.json")
    print(f"trained TinyCNN3D for {args.train_steps} steps in {time.perf_counter() - start:.1f} s "
          f"(held-out accuracy {accuracy:.0%}) -> {spec_path}")

    # One subject with a lesion, as a NIfTI file.
    rng = np.random.default_rng(2024)
    affine = grid_affine()
    site = np.array([22.0, 14.0, 10.0])
    data, lesion = brain_volume(rng, world_coordinates(affine), site)
    subject = save_image(nib.Nifti1Image(data, affine), out / "sub-demo_T1w.nii.gz")
    save_image(nib.Nifti1Image(lesion.astype(np.uint8), affine),
               out / "sub-demo_desc-lesion_mask.nii.gz")
    x, _ = to_model_grid(nib.load(subject), load_model_spec(spec_path))
    with torch.no_grad():
        probability = torch.softmax(model(x), 1)[0, 1].item()
    print(f"subject: {subject.name}, lesion at {site.tolist()} mm, P(lesion) = {probability:.3f}")

    methods = args.methods or available_methods()
    print(f"\n{'method':<24}{'seconds':>9}{'min':>12}{'max':>12}{'in lesion':>11}")
    failures = []
    rows = []
    for method in methods:
        start = time.perf_counter()
        try:
            result = Attribution(
                in_file=str(subject), model_spec=str(spec_path), methods=[method], seed=0
            ).run(cwd=str(out / "maps"))
        except Exception as error:  # report every method, then fail at the end
            seconds = time.perf_counter() - start
            failures.append(method)
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print(f"{method:<24}{seconds:>9.2f}  FAILED: {type(error).__name__}: {first_line}")
            continue
        seconds = time.perf_counter() - start
        values = nib.load(result.outputs.out_files[0]).get_fdata()
        mass = np.abs(values)
        share = mass[lesion].sum() / mass.sum() if mass.sum() > 0 else float("nan")
        rows.append((method, seconds, values.min(), values.max(), share))
        print(f"{method:<24}{seconds:>9.2f}{values.min():>12.3g}{values.max():>12.3g}"
              f"{share:>11.1%}")

    lesion_share = lesion.sum() / (data != 0).sum()
    print(f"\n(the lesion is {lesion_share:.1%} of the brain: a map that ignores it puts about that "
          f"share inside)")
    with open(out / "methods_summary.tsv", "w") as table:
        table.write("method\tseconds\tmin\tmax\tshare_in_lesion\n")
        for row in rows:
            table.write("\t".join([row[0]] + [f"{v:.6g}" for v in row[1:]]) + "\n")
    print(f"maps and sidecars in {out / 'maps'}")
    if failures:
        print(f"{len(failures)} method(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
