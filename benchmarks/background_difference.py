"""How much of GradientSHAP's and DeepLIFT-SHAP's lesion localisation does the input difference
alone give? Both explain x against a background b of training controls, through (x - b): on the
benchmark's synthetic cohorts the images are brought to the template with their *known*
transform, so every subject's anatomy is aligned exactly and x - b is, outside the lesion, noise,
bias field and intensity differences. This scores the model-free map |x - mean_b b| (the same 32
controls the benchmark drew) with the benchmark's metrics on the same correctly classified test
positives, beside the run's own GradientSHAP rows.

    python benchmarks/background_difference.py OUT/lesion docs/benchmark/models/lesion_tinycnn-retrained_seed-0.json \
        docs/benchmark/parts/lesion-added

For atrophy (three trained models): `--task atrophy --training-seed 0` with
docs/benchmark/models/atrophy_tinycnn-flat_seed-0.json and the parts folders
docs/benchmark/parts/atrophy-added docs/benchmark/parts/atrophy-main.
OUT is validation_parts.sh's output folder (its cohorts: seed 0, 200 + 100 training subjects,
160 test subjects at 2 mm). Prints one table: mean [95 % CI] over subjects (percentile bootstrap,
2,000 resamples, paired: the same draws for every map).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    from nipype_xai.benchmark.method_data import BACKGROUND_SIZE
    from nipype_xai.benchmark.scoring import _mask_on_grid, _scores, groundtruth_masks
    from nipype_xai.benchmark.settings import TO_TEMPLATE
    from nipype_xai.benchmark.training import cohort_seeds, training_arrays
    from nipype_xai.metrics.group import bootstrap_ci
    from nipype_xai.models import load_model, load_model_spec
    from nipype_xai.models.background import choose_background
    from nipype_xai.models.preprocessing import model_grid_for
    from nipype_xai.synth import load_template_anatomy
    from nipype_xai.synth.train import evaluate, load_cohort_arrays

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the task's OUTPUT_DIR of the benchmark")
    parser.add_argument("model", type=Path, help="the model's spec JSON")
    parser.add_argument("parts", type=Path, nargs="+",
                        help="the runs' parts folders (their part-*/subjects.tsv files)")
    parser.add_argument("--task", default="lesion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-easy", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=160)
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--training-seed", type=int, default=None,
                        help="the run's rows of this training seed only (a run of several "
                             "trained models; the given model is that seed's)")
    args = parser.parse_args()

    task, res = args.task, f"{args.resolution:g}"
    train_seed, test_seed, easy_seed = cohort_seeds(args.seed)
    cohorts = args.out / "cohorts"
    train_roots = [cohorts / f"{task}_train_seed-{train_seed}_n-{args.n_train}_res-{res}",
                   cohorts / f"{task}-easy_train_seed-{easy_seed}_n-{args.n_easy}_res-{res}"]
    test_root = cohorts / f"{task}_test_seed-{test_seed}_n-{args.n_test}_res-{res}"
    spec = load_model_spec(args.model)
    model = load_model(spec).eval()

    # The benchmark's background: the same draw (method_data.method_data) from the same inputs.
    X_train, y_train = training_arrays(spec, train_roots, task, {})
    chosen = choose_background(len(y_train), BACKGROUND_SIZE, args.seed,
                               labels=[int(v) for v in y_train], keep=0)
    mean_background = X_train[chosen].mean(0).numpy()

    X, y, subjects = load_cohort_arrays(test_root, spec, to_template=TO_TEMPLATE[task])
    predicted = evaluate(model, X, y)["predictions"]
    template_mask = load_template_anatomy(args.resolution).brain_mask
    grid = model_grid_for(template_mask, spec)
    brain = _mask_on_grid(template_mask, grid)
    rows = []
    for i, subject in enumerate(subjects):
        if int(y[i]) != 1 or int(predicted[i]) != 1:
            continue  # correctly classified positives, as the tables
        masks, _ = groundtruth_masks(test_root, subject, task, ["signal"], args.resolution, grid,
                                     brain)
        if "signal" not in masks:
            continue
        difference = np.abs(X[i].numpy() - mean_background).sum(0)
        values, _ = _scores(difference, masks["signal"], brain, grid.affine, None)
        rows.append({"subject": subject, "method": "|x - mean background|", **values})
    ours = pd.DataFrame(rows)

    run = pd.concat([pd.read_csv(p, sep="\t") for parts in args.parts
                     for p in sorted(parts.glob("part-*/subjects.tsv"))])
    run = run[(run.groundtruth == "signal") & run.correct & (run.label == task)
              & run.subject.isin(ours.subject)]
    if args.training_seed is not None:
        run = run[run.training_seed.astype(str) == str(args.training_seed)]
    table = pd.concat([ours, run[["subject", "method", *[c for c in ours.columns
                                                          if c not in ("subject", "method")]]]])
    metrics = ["precision_at_k", "auroc", "relevance_mass_accuracy", "emd"]
    wide = {m: table.pivot_table(index="subject", columns="method", values=m) for m in metrics}
    subjects_ = wide[metrics[0]].index.to_numpy()
    methods = ["|x - mean background|", "gradient_shap", "deeplift_shap", "smoothgrad_sq",
               "gradient", "laplace"]
    print(f"{task}, {spec.name}, correctly classified positives, GT signal: n = {len(subjects_)}")
    print("| map | " + " | ".join(metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for method in [m for m in methods if m in wide[metrics[0]].columns]:
        cells = []
        for metric in metrics:
            # One seed for every map: the same resampled subjects (paired).
            mean, low, high = bootstrap_ci(wide[metric][method].to_numpy(), n_boot=2000, seed=0)
            cells.append(f"{mean:.2f} [{low:.2f}, {high:.2f}]")
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
