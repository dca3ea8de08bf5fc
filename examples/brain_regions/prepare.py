"""Turn the Colin27 T1 + AAL atlas (Debian package mricron-data) into a small
train / val / test set for `smp3d train`.

* AAL's 116 regions are grouped into 7 coarse structures, left and right merged
  (table STRUCTURES below; background = 0).
* The volume is split at the mid-sagittal plane (world x = 0, found from the
  affine): one hemisphere is the test set, the other is for training.
  The test hemisphere is never seen before `evaluate.py`. By default there is
  no validation set (see README.md); `--val-fraction F` holds out the top F of
  the training hemisphere along the superior-inferior axis as `val_*`.
* `--mirror` (default on) also writes the training hemisphere mirrored
  left-right (`train_mirror_*`): left-right flip augmentation, since the CLI's
  random flips act on every axis at once and anatomy is only left-right symmetric.
* Every part is cropped to the brain's bounding box (AAL label > 0) plus a
  margin and saved with the affine of its crop: voxel (0, 0, 0) of a crop sits
  where it sat in the full volume, in world (mm) space.
* The image is normalised HERE (the CLI does not): z-score over the head
  (voxels brighter than 10% of the 99th percentile) of each crop, float32.

    python prepare.py --data-dir /usr/share/mricron/templates --out data
"""

import argparse
import json
import os

import nibabel as nib
import numpy as np

# class id, name, AAL region indices (the first column of aal.nii.txt), L and R merged
STRUCTURES = [
    (1, "frontal", list(range(1, 29))),  # Precentral .. Rectus (AAL codes 2xxx)
    (2, "insula_cingulate", list(range(29, 37)) + [39, 40]),  # Insula, Cingulum Ant/Mid/Post, ParaHippocampal
    (
        3,
        "deep_grey",
        list(range(71, 79)) + [37, 38, 41, 42],
    ),  # Caudate, Putamen, Pallidum, Thalamus, Hippocampus, Amygdala
    (4, "occipital", list(range(43, 57))),  # Calcarine, Cuneus, Lingual, Occipital Sup/Mid/Inf, Fusiform
    (
        5,
        "parietal",
        list(range(57, 71)),
    ),  # Postcentral, Parietal Sup/Inf, SupraMarginal, Angular, Precuneus, Paracentral
    (6, "temporal", list(range(79, 91))),  # Heschl, Temporal Sup/Mid/Inf and poles
    (7, "cerebellum", list(range(91, 117))),  # Cerebellum hemispheres + vermis
]


def read_aal_names(path):
    names = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                names[int(parts[0])] = parts[1]
    return names


def grouping_lut(names):
    lut = np.zeros(256, np.uint8)
    used = [i for _, _, ids in STRUCTURES for i in ids]
    assert sorted(used) == sorted(names), "every AAL region must be mapped exactly once"
    print("| class | structure | AAL regions |\n|---|---|---|")
    print("| 0 | background | outside the atlas |")
    for cls, name, ids in STRUCTURES:
        lut[ids] = cls
        merged = sorted({names[i].removesuffix("_L").removesuffix("_R") for i in ids})
        print(f"| {cls} | {name} | {', '.join(merged)} |")
    return lut


def axis_of(affine, letters):
    """Index of the voxel axis whose orientation code is one of `letters`."""
    codes = nib.aff2axcodes(affine)
    return next(i for i, c in enumerate(codes) if c in letters)


def crop_affine(affine, start):
    """Affine of a crop starting at voxel `start`: shift the origin to that voxel."""
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ np.asarray(start, float) + affine[:3, 3]
    return out


def normalise(image):
    """z-score over the head of this crop, float32."""
    head = image > 0.1 * np.percentile(image[image > 0], 99)
    return ((image - image[head].mean()) / image[head].std()).astype(np.float32)


def crop(image, label, box, affine):
    """image, label and affine of the voxel box [[start, stop], ...]."""
    sl = tuple(slice(a, b) for a, b in box)
    return image[sl], label[sl], crop_affine(affine, [a for a, _ in box])


def mirror(image, label, affine, lr):
    """A crop reflected through the plane x = 0: voxel order reversed along the left-right
    axis and the world reflected (x -> -x), so the affine keeps its orientation and a left
    hemisphere lands where a right one would be."""
    reverse = np.eye(4)
    reverse[lr, lr], reverse[lr, 3] = -1, image.shape[lr] - 1  # voxel i -> n - 1 - i
    return np.flip(image, lr), np.flip(label, lr), np.diag([-1.0, 1, 1, 1]) @ affine @ reverse


def save(out, name, image, label, affine):
    for kind, data in (("image", normalise(image)), ("label", label.astype(np.uint8))):
        img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
        nib.save(img, os.path.join(out, f"{name}_{kind}.nii.gz"))
    counts = np.bincount(label.ravel(), minlength=len(STRUCTURES) + 1)
    print(
        f"{name:12s} shape {image.shape}  origin (mm) {affine[:3, 3].round(1).tolist()}"
        f"  voxels per class {counts.tolist()}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder with ch2.nii.gz, aal.nii.gz, aal.nii.txt")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--train-side", choices=["L", "R"], default="L", help="hemisphere to train on; the other is the test set"
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="top fraction (superior) of the training hemisphere held out for validation; 0 = no val set",
    )
    p.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write the training hemisphere mirrored left-right (train_mirror_*)",
    )
    p.add_argument("--margin", type=int, default=8, help="voxels around the brain's bounding box")
    args = p.parse_args()

    t1 = nib.load(os.path.join(args.data_dir, "ch2.nii.gz"))
    aal = nib.load(os.path.join(args.data_dir, "aal.nii.gz"))
    assert t1.shape == aal.shape and np.allclose(t1.affine, aal.affine), "T1 and atlas must share a grid"
    affine = t1.affine
    assert np.count_nonzero(affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))) == 0, "expects an axis-aligned affine"
    image = np.asanyarray(t1.dataobj).astype(np.float32)
    label = grouping_lut(read_aal_names(os.path.join(args.data_dir, "aal.nii.txt")))[np.asanyarray(aal.dataobj)]

    # left-right axis and the world x of each voxel along it; x < 0 is the left hemisphere
    lr = axis_of(affine, "LR")
    si = axis_of(affine, "SI")
    x = affine[0, lr] * np.arange(t1.shape[lr]) + affine[0, 3]
    print(
        f"orientation {''.join(nib.aff2axcodes(affine))}: left-right = voxel axis {lr}, "
        f"superior-inferior = voxel axis {si}, midline between voxels {np.flatnonzero(x < 0).max()} "
        f"and {np.flatnonzero(x >= 0).min()} (x < 0 is left)"
    )

    os.makedirs(args.out, exist_ok=True)
    for side in ("L", "R"):
        half = np.flatnonzero(x < 0) if side == "L" else np.flatnonzero(x >= 0)
        in_half = np.zeros(t1.shape, bool)
        in_half[(slice(None),) * lr + (slice(half.min(), half.max() + 1),)] = True
        nz = np.argwhere((label > 0) & in_half)
        box = [
            [max(lo - args.margin, 0), min(hi + 1 + args.margin, n)]
            for lo, hi, n in zip(nz.min(0), nz.max(0), t1.shape, strict=True)
        ]
        box[lr] = [max(box[lr][0], half.min()), min(box[lr][1], half.max() + 1)]  # never cross the midline
        if side != args.train_side:
            save(args.out, "test", *crop(image, label, box, affine))
            continue
        if args.val_fraction > 0:
            lo, hi = box[si]
            cut = int(round(hi - args.val_fraction * (hi - lo)))
            superior_is_high = nib.aff2axcodes(affine)[si] == "S"
            if not superior_is_high:
                cut = int(round(lo + args.val_fraction * (hi - lo)))
            train_box, val_box = [list(b) for b in box], [list(b) for b in box]
            if superior_is_high:
                train_box[si], val_box[si] = [lo, cut], [cut, hi]
            else:
                train_box[si], val_box[si] = [cut, hi], [lo, cut]
            save(args.out, "val", *crop(image, label, val_box, affine))
        else:
            train_box = box
        train = crop(image, label, train_box, affine)
        save(args.out, "train", *train)
        if args.mirror:
            save(args.out, "train_mirror", *mirror(*train, lr))

    classes = ["background"] + [name for _, name, _ in STRUCTURES]
    with open(os.path.join(args.out, "classes.json"), "w") as f:
        json.dump(classes, f, indent=1)
    print(f"train side {args.train_side}, {len(classes)} classes -> {args.out}")


if __name__ == "__main__":
    main()
