#!/usr/bin/env bash
# Rebuild the shipped bundle, and the bench's bundle that keeps the teacher, from an
# `edgediff distill` run of the shipped teacher:
#
#   scripts/release_bundles.sh [RUN] [TEACHER] [OUT]
#
# OUT/shipped: the 2-step student (U-Net), the 1-step student, the tiny decoder, INT8 of both
#              U-Nets; this is what edgediff/assets/default-bundle holds.
# OUT/full:    the same with the teacher as U-Net for 8 and 4 steps (CFG), INT8 of all three;
#              docs/bench and benchmarks/distill_cpu.py run on it.
#
# A bundle keeps one calibration recording, taken at one step count, and an INT8 U-Net is
# quantised from the recording of the step count and guidance it runs at; so each U-Net is
# calibrated and quantised in turn, the step count generation uses by default last. The
# students guide best at 5 (picked on the tuning prompts, seed 1), the teacher at 3.
set -euo pipefail

GUIDANCE=5
TEACHER_GUIDANCE=3
RUN=${1:-out/distilled}
TEACHER=${2:-out/shipped-checkpoint}
OUT=${3:-out/release}
EDGEDIFF=${EDGEDIFF:-edgediff}

calibrate_and_quantize() {  # BUNDLE STEPS COMPONENT GUIDANCE
    "$EDGEDIFF" calibrate "$1" --steps "$2" --guidance "$4" --force
    "$EDGEDIFF" quantize "$1" --components "$3" --force
}

"$EDGEDIFF" export "$RUN" "$OUT/shipped" --students 2,1 --recommended-guidance $GUIDANCE --force
calibrate_and_quantize "$OUT/shipped" 1 unet.steps-1 $GUIDANCE
calibrate_and_quantize "$OUT/shipped" 2 unet $GUIDANCE

"$EDGEDIFF" export "$RUN" "$OUT/full" --teacher "$TEACHER" --students 2,1 \
    --recommended-steps 2 --recommended-guidance $GUIDANCE --force
calibrate_and_quantize "$OUT/full" 8 unet $TEACHER_GUIDANCE
calibrate_and_quantize "$OUT/full" 1 unet.steps-1 $GUIDANCE
calibrate_and_quantize "$OUT/full" 2 unet.steps-2 $GUIDANCE
