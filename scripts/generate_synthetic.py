"""Generate class-conditional images with Stable Diffusion into a folder ``synth=folder`` reads.

Run on a GPU machine with the ``gen`` extra (pip install -e '.[gen]') and the model weights
reachable (Hugging Face hub or its local cache), e.g.:

    python scripts/generate_synthetic.py --out synth/cifar10_sd --per-class 500 --size 32 \\
        --classes airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck

then train anywhere with
``python -m wdiv.train +exp=synthetic data=cifar10 synth=folder synth.generator.root=synth/cifar10_sd``.
The folder holds ``<out>/<class name>/<nnnnn>.png`` and appears only when complete. Images are
streamed to ``.<out name>.parts/`` beside it batch by batch, resized to ``--size`` as they come
(memory: one batch, whatever ``--per-class``); the same command after a kill resumes from there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from wdiv.io import write_json
from wdiv.training.generators import StableDiffusionGenerator
from wdiv.training.generators.folder import CLASSES_FILE
from wdiv.training.generators.pngs import image_path


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
    counts = [args.per_class] * len(names)
    parts = Path(args.out).with_name(f".{Path(args.out).name}.parts")
    spec = {**gen.cache_config(), "seed": args.seed, "size": args.size, "counts": counts}
    if (parts / "spec.json").exists() and json.loads((parts / "spec.json").read_text()) != spec:
        logging.warning("%s holds images of other options; starting over", parts)
        shutil.rmtree(parts)
    write_json(parts / "spec.json", spec)
    try:
        gen.generate_to(parts, counts, seed=args.seed, size=(args.size, args.size) if args.size else None)
        root = assemble(parts, counts, names, Path(args.out), overwrite=args.overwrite)
    except (FileExistsError, ValueError) as e:  # ConfigError is a ValueError
        print(f"generate_synthetic: {e}", file=sys.stderr)
        return 1
    logging.info("wrote %d images of %d classes to %s", sum(counts), len(names), root)
    return 0


def assemble(parts: Path, counts: list[int], names: list[str], root: Path, *, overwrite: bool = False) -> Path:
    """Move the streamed images into ``root/<class name>/<nnnnn>.png`` (+ classes.json, the
    layout ``synth=folder`` reads; renames on one filesystem, no second copy of the set); the
    folder appears whole, then the parts are removed (a kill while moving costs only the
    regeneration of the moved images, which their batch seeds make the same)."""
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists (pass --overwrite to replace it)")
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for c, (name, n) in enumerate(zip(names, counts)):
        (tmp / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            os.replace(image_path(parts, c, i), tmp / name / f"{i:05d}.png")
    (tmp / CLASSES_FILE).write_text(json.dumps(names))
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    shutil.rmtree(parts, ignore_errors=True)
    return root


if __name__ == "__main__":
    sys.exit(main())
