"""Stable Diffusion text-to-image, one prompt per class (optional extra ``gen``; meant for a GPU).

diffusers is imported only when a pipeline is first needed, so wdiv works without it. A
ready pipeline object (anything called like a diffusers text-to-image pipeline and returning
``.images``) can be passed in instead, which is how the tests run this path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wdiv.errors import ConfigError
from wdiv.training.generators.base import Generator

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

    def generate(self, counts: Sequence[int], *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        pipe = self.pipeline()
        bs = int(self.cfg["batch_size"])
        jobs = [(c, start, min(bs, int(n) - start)) for c, n in enumerate(counts) for start in range(0, int(n), bs)]
        images, labels = [], []
        for c, start, size in tqdm(jobs, desc="stable diffusion", unit="batch"):
            # one generator per (seed, class, batch): any batch can be regenerated alone
            gen = torch.Generator(device=self.device).manual_seed(int(seed) * 1_000_003 + c * 10_007 + start)
            out = pipe(
                prompt=[self.prompt(c)] * size,
                negative_prompt=[self.cfg["negative_prompt"]] * size if self.cfg["negative_prompt"] else None,
                num_inference_steps=int(self.cfg["steps"]),
                guidance_scale=float(self.cfg["guidance_scale"]),
                height=int(self.cfg["height"]),
                width=int(self.cfg["width"]),
                generator=gen,
                output_type="np",
            )
            images.append(_to_uint8_chw(out.images))
            labels += [c] * size
        if not images:
            return torch.empty((0, 3, 1, 1), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        return torch.cat(images), torch.tensor(labels, dtype=torch.int64)


def _to_uint8_chw(batch: Any) -> torch.Tensor:
    """diffusers ``output_type="np"`` images (float [B, H, W, 3] in [0, 1]) -> uint8 [B, 3, H, W]."""
    arr = np.stack([np.asarray(im) for im in batch]) if not isinstance(batch, np.ndarray) else batch
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
