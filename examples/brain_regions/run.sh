#!/usr/bin/env bash
# Colin27 T1 + AAL atlas -> 7 coarse brain structures: train on the left hemisphere,
# segment the right one with the sliding window, score it.
#   sudo apt-get install mricron-data        # the data (~16 MB)
#   bash examples/brain_regions/run.sh [WORK_DIR]
# Environment: DATA_DIR (default /usr/share/mricron/templates), SMP3D, PYTHON, MINUTES, ITERS, DEVICE.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:-brain_regions_out}
DATA_DIR=${DATA_DIR:-/usr/share/mricron/templates}
SMP3D=${SMP3D:-smp3d}
PYTHON=${PYTHON:-python}
MINUTES=${MINUTES:-20}
ITERS=${ITERS:-40}
DEVICE=${DEVICE:-auto}
D=$WORK/data

"$PYTHON" "$HERE/prepare.py" --data-dir "$DATA_DIR" --out "$D"

# The planned recipe: without --arch/--encoder/--patch, `smp3d train` fingerprints the data and plans
# the spacing, patch, batch and network (written to $WORK/ckpt/plan.json; on a CPU the `light`
# network), trains with nnU-Net's augmentation and deep supervision, and stops after MINUTES of
# training with a final checkpoint. Images are already z-scored by prepare.py (--normalize none).
# Mirroring only left-right (--flip-axes 0; the default mirrors every axis, turning the brain upside
# down), besides the mirrored copy of the training hemisphere. No validation set: best/ = last/.
start=$(date +%s)
"$SMP3D" train \
  --train-path "$D/train_image.nii.gz,$D/train_label.nii.gz" \
               "$D/train_mirror_image.nii.gz,$D/train_mirror_label.nii.gz" \
  --normalize none --flip-axes 0 --classes 8 --iters "$ITERS" --time-budget "$MINUTES" \
  --checkpoint-dir "$WORK/ckpt" --overwrite --device "$DEVICE" --seed 0 --no-progress
echo "training took $(( $(date +%s) - start )) s"

start=$(date +%s)
"$SMP3D" predict --checkpoint "$WORK/ckpt" --input "$D/test_image.nii.gz" \
  --output "$WORK/pred.nii.gz" --overlap 0.5 --tta 0 --device "$DEVICE" --no-progress
echo "prediction took $(( $(date +%s) - start )) s"

"$PYTHON" "$HERE/evaluate.py" --prediction "$WORK/pred.nii.gz" --label "$D/test_label.nii.gz" \
  --classes "$D/classes.json"
