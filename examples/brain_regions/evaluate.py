"""Per-class Dice of a predicted label map against the reference, as a markdown table.

Refuses a prediction whose grid (shape or affine) differs from the label's: the CLI
must write its output on the input's grid, in the same place in world space.

    python evaluate.py --prediction pred.nii.gz --label data/test_label.nii.gz --classes data/classes.json
"""

import argparse
import json
import sys

import nibabel as nib
import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prediction", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--classes", help="classes.json from prepare.py (names; index = class id)")
    args = p.parse_args()

    pred_img, ref_img = nib.load(args.prediction), nib.load(args.label)
    if pred_img.shape != ref_img.shape:
        sys.exit(f"shape mismatch: prediction {pred_img.shape} vs label {ref_img.shape}")
    if not np.allclose(pred_img.affine, ref_img.affine, atol=1e-4):
        sys.exit(f"affine mismatch:\nprediction\n{pred_img.affine}\nlabel\n{ref_img.affine}")
    print(f"grid OK: shape {ref_img.shape}, affine equal to the label's\n")

    pred = np.asanyarray(pred_img.dataobj)
    ref = np.asanyarray(ref_img.dataobj).astype(np.int64)
    if pred.dtype.kind == "f" and not np.all(pred == np.round(pred)):
        sys.exit("prediction holds fractional values; expected class indices")
    pred = pred.astype(np.int64)

    if args.classes:
        with open(args.classes) as f:
            names = json.load(f)
    else:
        names = [str(c) for c in range(max(pred.max(), ref.max()) + 1)]

    print("| class | structure | voxels (ref) | voxels (pred) | Dice |\n|---|---|---:|---:|---:|")
    dices = []
    for c in range(1, len(names)):  # background excluded from the mean
        a, b = pred == c, ref == c
        denom = a.sum() + b.sum()
        dice = 2.0 * np.logical_and(a, b).sum() / denom if denom else float("nan")
        if b.any():
            dices.append(dice)
        print(f"| {c} | {names[c]} | {b.sum()} | {a.sum()} | {dice:.3f} |")
    print(f"| | **mean (foreground)** | | | **{np.mean(dices):.3f}** |")


if __name__ == "__main__":
    main()
