"""``smp3d-convert-weights``: turn 2D weights into a 3D weight folder (and optionally publish it)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smp3d-convert-weights",
        description=(
            "Inflate the 2D weights of an encoder (default: smp's Hub release smp-hub/<encoder>.<tag>) into a 3D "
            "weight folder with model.safetensors, config.json and a model card, verified by an equivalence check. "
            "With --model, inflate a whole trained 2D segmentation model folder instead."
        ),
    )
    parser.add_argument("encoder", nargs="?", help="encoder name, e.g. resnet34 (omit with --model)")
    parser.add_argument("--tag", default="imagenet", help="pretrained tag of the 2D weights (default: imagenet)")
    parser.add_argument("--source", help="a Hub repo id or a local .safetensors/.pth/.pt/.bin file")
    parser.add_argument("--revision", help="Hub revision of the source (default: the spec's pinned revision)")
    parser.add_argument("--output", help="output folder (default: ./<encoder>.<tag>, or ./<model folder>-3d)")
    parser.add_argument("--mode", choices=("i3d", "center"), default="i3d", help="inflation rule (default: i3d)")
    parser.add_argument("--model", metavar="SRC", help="a 2D segmentation model folder written by save_pretrained")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random check image (default: 0)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the output folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _fmt(error: dict[str, float] | None) -> str:
    if not error:
        return "not measured"
    return f"max abs {error['max_abs']:.3g}, max rel {error['max_rel']:.3g}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 1 on a conversion error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model is None and args.encoder is None:
        parser.error("give an ENCODER name, or --model SRC")
    if args.model is not None and (args.encoder is not None or args.source is not None):
        parser.error("--model converts a whole model folder: do not combine it with ENCODER or --source")
    if args.private and not args.push_to_hub:
        parser.error("--private only applies with --push-to-hub")

    from .convert import ConversionError, convert_encoder, convert_model, push_folder

    try:
        if args.model is not None:
            result = convert_model(
                args.model, output=args.output, mode=args.mode, seed=args.seed, progress=not args.no_progress
            )
        else:
            result = convert_encoder(
                args.encoder,
                tag=args.tag,
                source=args.source,
                revision=args.revision,
                output=args.output,
                mode=args.mode,
                seed=args.seed,
                progress=not args.no_progress,
            )
    except (ConversionError, FileNotFoundError, KeyError, ValueError) as exc:
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"smp3d-convert-weights: error: {message}", file=sys.stderr)
        return 1
    print(
        f"Wrote {result.output} in {result.seconds:.1f} s; equivalence error {_fmt(result.equivalence_error)} "
        f"(after reloading: {_fmt(result.verified_error)})."
    )
    if args.push_to_hub:
        try:
            url = push_folder(result.output, args.push_to_hub, private=args.private)
        except Exception as exc:  # network, authentication, permissions
            print(f"smp3d-convert-weights: error: upload to {args.push_to_hub!r} failed: {exc}", file=sys.stderr)
            return 1
        print(f"Uploaded to {args.push_to_hub}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
