"""Generate class-conditional images with Stable Diffusion into a folder ``synth=folder`` reads.

Run on a GPU machine with the ``gen`` extra (pip install -e '.[gen]') and the model weights
reachable (Hugging Face hub or its local cache), e.g.:

    python scripts/generate_synthetic.py --out synth/cifar10_sd --per-class 500 --size 32 \\
        --classes airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck

then train anywhere with
``python -m wdiv.train +exp=synthetic data=cifar10 synth=folder synth.generator.root=synth/cifar10_sd``.
The folder holds ``<out>/<class name>/<nnnnn>.png`` and appears only when complete.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from torchvision.transforms.v2.functional import resize

from wdiv.training.generators import StableDiffusionGenerator, write_image_folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    ap.add_argument("--classes", required=True, help="comma-separated class names, in label order")
    ap.add_argument("--per-class", type=int, required=True, help="images per class")
    ap.add_argument("--prompt", default="a photo of a {name}", help="prompt template; {name} = class name")
    ap.add_argument("--model-id", default="stabilityai/stable-diffusion-2-1-base")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--resolution", type=int, default=512, help="generation height = width")
    ap.add_argument("--size", type=int, default=None, help="resize to this square before saving")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    return ap.parse_args(argv)


def check_args(args: argparse.Namespace, names: list[str]) -> str | None:
    """The first bad option as one line, before a pipeline is loaded or a file written."""
    if not names:
        return "--classes: no class name given"
    for flag, value in (("--per-class", args.per_class), ("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value < 1:
            return f"{flag} {value}: at least 1"
    if args.resolution < 8 or args.resolution % 8:
        return f"--resolution {args.resolution}: a positive multiple of 8 (the diffusion VAE's stride)"
    if args.size is not None and args.size < 1:
        return f"--size {args.size}: at least 1"
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        return f"--out {out}: exists (pass --overwrite to replace it)"
    return None


def main(argv: list[str] | None = None, pipeline: Any = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    names = [c.strip() for c in args.classes.split(",") if c.strip()]
    if (why := check_args(args, names)) is not None:
        print(f"generate_synthetic: error: {why}", file=sys.stderr)
        return 2
    gen = StableDiffusionGenerator(
        {
            "name": "stable_diffusion",
            "model_id": args.model_id,
            "prompt": args.prompt,
            "class_names": names,
            "steps": args.steps,
            "guidance_scale": args.guidance_scale,
            "height": args.resolution,
            "width": args.resolution,
            "batch_size": args.batch_size,
        },
        pipeline=pipeline,
    )
    try:
        images, labels = gen.generate([args.per_class] * len(names), seed=args.seed)
        if args.size:
            images = resize(images, [args.size, args.size], antialias=True)
        root = write_image_folder(images, labels, args.out, class_names=names, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as e:  # ConfigError is a ValueError
        print(f"generate_synthetic: {e}", file=sys.stderr)
        return 1
    logging.info("wrote %d images of %d classes to %s", len(labels), len(names), root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
