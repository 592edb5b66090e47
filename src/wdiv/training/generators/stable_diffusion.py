"""Stable Diffusion text-to-image, one prompt per class (optional extra ``gen``; meant for a GPU).

diffusers is imported only when a pipeline is first needed, so wdiv works without it. A
ready pipeline object (anything called like a diffusers text-to-image pipeline and returning
``.images``) can be passed in instead, which is how the tests run this path.

Prompts name the dataset's classes (``{name}`` in ``prompt``; the class names the real split
carries, unless ``class_names`` or ``prompts`` say otherwise).

At scale (:meth:`StableDiffusionGenerator.generate_to`, what the synthetic cache uses) images
are streamed to disk batch by batch, resized to the target size (the real images' size) as they
come, one PNG per image written atomically: memory holds one batch at the generation
resolution whatever the set size, and a killed generation resumes where it stopped (a batch
whose files are all there and readable is skipped; any other batch is generated again from
its own seed, so the result is the same as an uninterrupted run).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wdiv.errors import ConfigError
from wdiv.training.generators.base import Generator
from wdiv.training.generators.pngs import image_path, is_finished, write_png

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "model_id": "stabilityai/stable-diffusion-2-1-base",
    "prompt": "a photo of a {name}",  # {name}: the class name
    "prompts": None,  # optional list, one full prompt per class (overrides prompt)
    "negative_prompt": None,
    "class_names": None,  # default: the dataset's class names
    "steps": 25,
    "guidance_scale": 7.5,
    "height": 512,
    "width": 512,
    "batch_size": 8,
    "device": None,  # None: cuda when available
    "dtype": "float16",  # on CPU float32 is used whatever this says
}


class StableDiffusionGenerator(Generator):
    name = "stable_diffusion"
    streams = True  # generate_to: one PNG an image, resumable (the synthetic cache uses it)

    def __init__(self, cfg: Any, pipeline: Any = None):
        super().__init__({**DEFAULTS, **dict(cfg)})
        self._pipeline = pipeline

    def cache_config(self) -> dict[str, Any]:
        return {k: v for k, v in sorted(self.cfg.items()) if k not in ("device", "batch_size")}

    @property
    def device(self) -> str:
        return self.cfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu")

    def pipeline(self) -> Any:
        if self._pipeline is None:
            try:
                from diffusers import AutoPipelineForText2Image
            except ImportError as e:
                raise ConfigError(
                    "synth.generator.name=stable_diffusion needs diffusers: pip install 'wdiv[gen]'"
                ) from e
            dtype = getattr(torch, str(self.cfg["dtype"])) if self.device != "cpu" else torch.float32
            log.info("loading %s on %s", self.cfg["model_id"], self.device)
            pipe = AutoPipelineForText2Image.from_pretrained(self.cfg["model_id"], torch_dtype=dtype)
            self._pipeline = pipe.to(self.device)
        if hasattr(self._pipeline, "set_progress_bar_config"):
            self._pipeline.set_progress_bar_config(disable=True)
        return self._pipeline

    def prompt(self, c: int) -> str:
        if self.cfg["prompts"]:
            return str(self.cfg["prompts"][c])
        names = self.cfg["class_names"] or self.class_names
        if not names:
            raise ConfigError("synth.generator.class_names: the prompts need class names")
        return str(self.cfg["prompt"]).format(name=names[c])

    def _jobs(self, counts: Sequence[int]) -> list[tuple[int, int, int]]:
        """(class, first index, batch size) of every pipeline call, class by class."""
        bs = int(self.cfg["batch_size"])
        return [(c, start, min(bs, int(n) - start)) for c, n in enumerate(counts) for start in range(0, int(n), bs)]

    def _batch(self, c: int, start: int, size: int, seed: int) -> torch.Tensor:
        """uint8 [size, 3, H, W] images of class ``c`` from index ``start``, at the pipeline's size."""
        # one generator per (seed, class, batch): any batch can be regenerated alone
        gen = torch.Generator(device=self.device).manual_seed(int(seed) * 1_000_003 + c * 10_007 + start)
        out = self.pipeline()(
            prompt=[self.prompt(c)] * size,
            negative_prompt=[self.cfg["negative_prompt"]] * size if self.cfg["negative_prompt"] else None,
            num_inference_steps=int(self.cfg["steps"]),
            guidance_scale=float(self.cfg["guidance_scale"]),
            height=int(self.cfg["height"]),
            width=int(self.cfg["width"]),
            generator=gen,
            output_type="np",
        )
        return _to_uint8_chw(out.images)

    def generate(self, counts: Sequence[int], *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All images in memory at the pipeline's size (small sets; see :meth:`generate_to`)."""
        self.pipeline()
        images, labels = [], []
        for c, start, size in tqdm(self._jobs(counts), desc="stable diffusion", unit="batch"):
            images.append(self._batch(c, start, size, seed))
            labels += [c] * size
        if not images:
            return torch.empty((0, 3, 1, 1), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        return torch.cat(images), torch.tensor(labels, dtype=torch.int64)

    def generate_to(self, folder: str | Path, counts: Sequence[int], *, seed: int, size: Sequence[int] | None = None) -> Path:
        """Write ``counts[c]`` images of each class c to ``folder/<c>/<i>.png`` (:mod:`.pngs`),
        resized to ``size`` (H, W) as they are made; resumes a partly written folder."""
        folder = Path(folder)
        target = tuple(int(v) for v in size) if size is not None else None
        todo = [job for job in self._jobs(counts) if not all(is_finished(image_path(folder, job[0], job[1] + k), target) for k in range(job[2]))]
        done = len(self._jobs(counts)) - len(todo)
        if done:
            log.info("stable diffusion: resuming %s (%d of %d batches already there)", folder, done, done + len(todo))
        for c, start, n in tqdm(todo, desc="stable diffusion", unit="batch"):
            batch = self._batch(c, start, n, seed)
            if target is not None and tuple(batch.shape[-2:]) != target:
                from torchvision.transforms.v2.functional import resize

                batch = resize(batch, list(target), antialias=True)
            for k, image in enumerate(batch):
                write_png(image_path(folder, c, start + k), image)
        return folder


def _to_uint8_chw(batch: Any) -> torch.Tensor:
    """diffusers ``output_type="np"`` images (float [B, H, W, 3] in [0, 1]) -> uint8 [B, 3, H, W]."""
    arr = np.stack([np.asarray(im) for im in batch]) if not isinstance(batch, np.ndarray) else batch
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
