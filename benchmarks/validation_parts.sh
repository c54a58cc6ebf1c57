#!/usr/bin/env bash
# The validation benchmark of docs/benchmark.md, in resumable parts (issue 15).
#
#   bash benchmarks/validation_parts.sh K        # compute part K (1..N_PARTS) of every run
#   bash benchmarks/validation_parts.sh K RUN... # part K of the runs named (e.g. atrophy/added)
#   bash benchmarks/validation_parts.sh merge    # merge every finished part into docs/benchmark/
#   bash benchmarks/validation_parts.sh resnet K # part K of lesion/resnet (see below)
#
# Every part trains (or reuses) the same models on the same cohorts in OUT, then scores its share
# of the test subjects (every N_PARTS-th subject). Parts can run one after the other, side by side,
# or on different machines sharing OUT; a killed part resumes from its last finished subject. A
# finished part's tables (a few MB) are copied to docs/benchmark/parts/ and committed, its models
# (~0.3 MB each) to docs/benchmark/models/, from where a later part on another machine reuses
# them; "merge" makes the summary, figures and report from the committed tables and computes
# nothing.
#
# Runs (one OUTPUT_DIR per task; --name keeps each method set's parts apart):
#   lesion/main         TinyCNN3D (the bundled model's architecture), 3 training seeds, the
#                       gradient, path, propagation and CAM methods, sanity check on 10 subjects
#   lesion/resnet       MONAI ResNet, 1 training seed, the same methods, part 6 only: it reached a
#                       test balanced accuracy of 0.69 (< 0.7, did not learn), reported from that
#                       part's models.tsv and excluded; scoring its other parts would decide
#                       nothing (`validation_parts.sh resnet K` runs another part)
#   lesion/perturbation the five perturbation methods and five reference methods, parts
#                       1..PERTURBATION_PARTS only (their cost per map is 30-100 x a gradient's;
#                       see docs/benchmark.md), on docs/benchmark/models/
#                       lesion_tinycnn-retrained_seed-0: TinyCNN3D trained as lesion/main's seed
#                       0, on another VM, which gave other weights (its own model in the tables)
#   atrophy/main        TinyCNN3D without global pooling (position-aware), 3 training seeds
#   atrophy/added       the methods added after the review (CAM variants, GradientSHAP and
#                       DeepLIFT-SHAP with a background of 32 training controls, PatternNet and
#                       PatternAttribution with patterns fitted on the training inputs), on the
#                       same models as atrophy/main (committed); a run of its own, so its parts
#                       may come from newer code than main's (merge checks that scores both runs
#                       computed, the baselines, agree)
#   lesion/added        the same methods and the five reference methods on lesion/perturbation's
#                       committed model: lesion/main's models were lost with the VM that trained
#                       them, and a retrain gives other weights (see above), so the added
#                       methods are compared with the reference methods on one model; the
#                       background and patterns come from the training cohorts that model was
#                       trained on (generated again from their seeds)
#
# Environment: OUT (default ~/nipype-xai-benchmark), N_PARTS (8), PERTURBATION_PARTS (2), DEVICE
# (cpu; cuda runs the same commands on a GPU), NIPYPE_XAI (the command, default nipype-xai).
set -euo pipefail
OUT=${OUT:-$HOME/nipype-xai-benchmark}
N_PARTS=${N_PARTS:-8}
PERTURBATION_PARTS=${PERTURBATION_PARTS:-2}
DEVICE=${DEVICE:-cpu}
NIPYPE_XAI=${NIPYPE_XAI:-nipype-xai}
DOCS=$(cd "$(dirname "$0")/.." && pwd)/docs/benchmark

FAST="gradient saliency input_x_gradient smoothgrad smoothgrad_sq vargrad integrated_gradients
deeplift guided_backprop deconvnet lrp_epsilon lrp_epsilon_plus lrp_epsilon_plus_flat
lrp_alpha2_beta1 lrp_epsilon_gamma_box deep_taylor gradcam gradcam_pp smooth_gradcam_pp"
PERTURBATION="occlusion atlas_occlusion shapley_sampling kernel_shap lime"
# Scored beside the perturbation methods, on the same model and subjects (they cost seconds).
REFERENCE="gradient smoothgrad smoothgrad_sq lrp_epsilon_plus gradcam"
ADDED="guided_gradcam score_cam layercam hirescam gradient_shap deeplift_shap pattern_net
pattern_attribution"
# Same cohorts for every run: 200 training + 100 "easy" training subjects, 160 test subjects
# (80 with the signal) per task at 2 mm, models on the 4 mm template grid.
COMMON=(--n-train 200 --n-test 160 --seed 0 --resolution 2 --sanity-max-steps 4 --device "$DEVICE"
        --no-progress)

run() {  # run OUTPUT_DIR NAME PART ARGS...
    local out=$1 name=$2 part=$3
    shift 3
    # The trained models travel with the parts: a part first takes the task's committed models
    # (docs/benchmark/models/<task>_*, a spec JSON beside its weights, as the benchmark writes
    # them; the benchmark reuses a model whose recorded training matches), and afterwards commits
    # what it trained. Training on a CPU is bit-reproducible on the same kind of CPU only: a
    # retrain on another VM (same code, data, seed, versions and thread count) gave other
    # weights, and merge refuses parts of one model with two sets of weights.
    mkdir -p "$OUT/$out/models" "$DOCS/models"
    find "$DOCS/models" -maxdepth 1 -name "${out}_*" -exec cp -n {} "$OUT/$out/models/" \;
    # shellcheck disable=SC2086
    "$NIPYPE_XAI" benchmark "$OUT/$out" "${COMMON[@]}" --name "$name" --part "$part/$N_PARTS" "$@"
    find "$OUT/$out/models" -maxdepth 1 -name "${out}_*" -exec cp -n {} "$DOCS/models/" \;
    mkdir -p "$DOCS/parts/$out-$name"
    local label
    label=$(printf "part-%0${#N_PARTS}d-of-%d" "$part" "$N_PARTS")
    cp -r "$OUT/$out/parts/$name/$label" "$DOCS/parts/$out-$name/"
}

resnet() {  # resnet K: part K of lesion/resnet
    # shellcheck disable=SC2086
    run lesion resnet "$1" --task lesion --architectures resnet --training-seeds 0 \
        --methods $FAST --n-sanity 10
}

RUNS="lesion/main atrophy/main lesion/added atrophy/added lesion/perturbation"

one() {  # one RUN K: part K of RUN
    # shellcheck disable=SC2086
    case "$1" in
    lesion/main)
        run lesion main "$2" --task lesion --architectures tinycnn --training-seeds 0 1 2 \
            --methods $FAST --n-sanity 10 ;;
    atrophy/main)
        run atrophy main "$2" --task atrophy --architectures tinycnn-flat --training-seeds 0 1 2 \
            --methods $FAST --n-sanity 10 ;;
    lesion/added)
        run lesion added "$2" --task lesion \
            --model "$DOCS/models/lesion_tinycnn-retrained_seed-0.json" \
            --methods $ADDED $REFERENCE --n-sanity 10 ;;
    atrophy/added)
        run atrophy added "$2" --task atrophy --architectures tinycnn-flat --training-seeds 0 1 2 \
            --methods $ADDED --n-sanity 10 ;;
    lesion/perturbation)
        if [ "$2" -le "$PERTURBATION_PARTS" ]; then
            run lesion perturbation "$2" --task lesion \
                --model "$DOCS/models/lesion_tinycnn-retrained_seed-0.json" \
                --methods $PERTURBATION $REFERENCE --n-sanity 2
        fi ;;
    *)
        echo "validation_parts.sh: unknown run '$1' (runs: $RUNS)" >&2
        exit 2 ;;
    esac
}

case "${1:?usage: validation_parts.sh K [RUN...]|resnet K|merge}" in
resnet)
    resnet "${2:?usage: validation_parts.sh resnet K}"
    ;;
merge)
    "$NIPYPE_XAI" benchmark "$DOCS" --merge "$DOCS"/parts/*/part-*
    ;;
*)
    K=$1
    shift
    for name in ${*:-$RUNS}; do
        one "$name" "$K"
    done
    ;;
esac
