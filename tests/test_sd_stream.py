"""Stable Diffusion at scale, with a stand-in pipeline: images stream to disk at the target size,
memory holds one batch, a killed generation resumes to the same images, and a damaged file is
made again; prompts name the dataset's classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wdiv.training.generators import StableDiffusionGenerator, cached_generate
from wdiv.training.generators.pngs import image_path, read_generated, read_rgb, write_png


class Pipe:
    """Called like a diffusers pipeline: seeded noise images at the asked size; counts calls."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.prompts, self.fail_after, self.largest = 0, [], fail_after, 0

    def __call__(self, *, prompt, num_inference_steps, guidance_scale, height, width, generator, output_type, negative_prompt=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # killed mid-generation
        self.calls += 1
        self.prompts.append(prompt[0])
        self.largest = max(self.largest, len(prompt))
        images = torch.rand((len(prompt), height, width, 3), generator=generator).numpy().astype(np.float32)

        class Out:
            pass

        out = Out()
        out.images = images
        return out


def _gen(pipe, batch_size=3):
    return StableDiffusionGenerator({"name": "stable_diffusion", "height": 64, "width": 64, "batch_size": batch_size}, pipeline=pipe)


def _fit(gen, names=("cat", "dog")):
    gen.fit(torch.zeros((4, 3, 16, 12), dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), class_names=list(names), seed=0)


def test_images_stream_to_disk_at_the_target_size_one_batch_at_a_time(tmp_path):
    pipe = Pipe()
    gen = _gen(pipe)
    _fit(gen)
    gen.generate_to(tmp_path / "parts", [5, 4], seed=7, size=(16, 12))
    images, labels = read_generated(tmp_path / "parts", [5, 4])
    assert images.shape == (9, 3, 16, 12) and images.dtype == torch.uint8
    assert labels.tolist() == [0] * 5 + [1] * 4
    assert pipe.calls == 4 and pipe.largest == 3  # batches of at most batch_size at 64 px
    assert pipe.prompts == ["a photo of a cat", "a photo of a cat", "a photo of a dog", "a photo of a dog"]  # the dataset's names
    assert not list((tmp_path / "parts").rglob("*.tmp"))


def test_a_killed_generation_resumes_to_the_same_images(tmp_path):
    whole = _gen(Pipe())
    _fit(whole)
    whole.generate_to(tmp_path / "whole", [5, 4], seed=7, size=(16, 12))
    killed = Pipe(fail_after=2)
    gen = _gen(killed)
    _fit(gen)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_to(tmp_path / "resumed", [5, 4], seed=7, size=(16, 12))
    assert len(list((tmp_path / "resumed").rglob("*.png"))) == 5  # class 0's two batches (3 + 2) written
    image_path(tmp_path / "resumed", 0, 1).write_bytes(b"\x89PNG cut short")  # a damaged file: its batch is redone
    again = Pipe()
    gen = _gen(again)
    _fit(gen)
    gen.generate_to(tmp_path / "resumed", [5, 4], seed=7, size=(16, 12))
    assert again.calls == 3  # the damaged first batch and class 1's two, never made
    a, la = read_generated(tmp_path / "whole", [5, 4])
    b, lb = read_generated(tmp_path / "resumed", [5, 4])
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_the_cache_keeps_one_file_and_reuses_it(tmp_path):
    real_x = torch.randint(0, 255, (6, 3, 16, 12), dtype=torch.uint8)
    real_y = torch.tensor([0, 1, 0, 1, 0, 1])
    pipe = Pipe()
    x, y = cached_generate(_gen(pipe), real_x, real_y, [2, 3], seed=1, cache_dir=tmp_path, class_names=["cat", "dog"])
    assert x.shape == (5, 3, 16, 12) and y.tolist() == [0, 0, 1, 1, 1]
    assert [p.suffix for p in tmp_path.iterdir()] == [".safetensors"]  # the per-image parts are gone
    again = Pipe()
    x2, y2 = cached_generate(_gen(again), real_x, real_y, [2, 3], seed=1, cache_dir=tmp_path, class_names=["cat", "dog"])
    assert again.calls == 0 and torch.equal(x, x2) and torch.equal(y, y2)


def test_the_generation_script_resumes_after_a_kill_to_the_same_folder(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "generate_synthetic.py"
    spec = importlib.util.spec_from_file_location("generate_synthetic", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--classes", "cat,dog", "--per-class", "4", "--resolution", "64", "--size", "16", "--batch-size", "3"]
    assert script.main(["--out", str(tmp_path / "whole"), *argv], pipeline=Pipe()) == 0
    with pytest.raises(KeyboardInterrupt):
        script.main(["--out", str(tmp_path / "resumed"), *argv], pipeline=Pipe(fail_after=3))
    assert not (tmp_path / "resumed").exists() and (tmp_path / ".resumed.parts").is_dir()
    again = Pipe()
    assert script.main(["--out", str(tmp_path / "resumed"), *argv], pipeline=again) == 0
    assert again.calls == 1 and not (tmp_path / ".resumed.parts").exists()  # only the batch never made
    files = sorted(p.relative_to(tmp_path / "whole").as_posix() for p in (tmp_path / "whole").rglob("*.png"))
    assert len(files) == 8 and files == sorted(p.relative_to(tmp_path / "resumed").as_posix() for p in (tmp_path / "resumed").rglob("*.png"))
    assert all((tmp_path / "whole" / f).read_bytes() == (tmp_path / "resumed" / f).read_bytes() for f in files)


def test_prompts_name_the_datasets_classes_through_the_real_data_path(tmp_path, monkeypatch):
    """synth=stable_diffusion on the digits split: one prompt per target class, by its name."""
    from hydra import compose, initialize_config_dir

    from wdiv.train import CONFIG_DIR
    from wdiv.training.data import build_splits

    pipe = Pipe()
    monkeypatch.setattr(StableDiffusionGenerator, "pipeline", lambda self: pipe)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["+exp=synthetic", "synth=stable_diffusion", "level=0.05", "synth.generator.batch_size=64",
                                          "synth.generator.height=32", "synth.generator.width=32", f"paths.cache_dir={tmp_path}"])
    splits = build_splits(cfg.data, cfg.paths, task="target", synth_cfg=cfg.synth, seed=0)
    assert splits.classes and splits.synth["n_synthetic"] > 0
    assert sorted(set(pipe.prompts)) == sorted(f"a photo of a {name}" for name in splits.classes)
    assert splits.train.images.shape[-2:] == splits.real_train.images.shape[-2:]  # streamed at the target size


def test_the_script_assembles_the_streamed_images_into_the_folder_layout(tmp_path, monkeypatch):
    """scripts/generate_synthetic.py: the streamed PNGs end up, unchanged, as root/<class name>/<n>.png
    with classes.json (what synth=folder reads), the parts folder gone."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_synthetic", Path(__file__).resolve().parents[1] / "scripts" / "generate_synthetic.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    parts = tmp_path / ".out.parts"
    made = {}
    for c, n in enumerate([2, 3]):
        for i in range(n):
            made[c, i] = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(10 * c + i))
            write_png(image_path(parts, c, i), made[c, i])
    root = script.assemble(parts, [2, 3], ["cat", "dog"], tmp_path / "out")
    assert json.loads((root / "classes.json").read_text()) == ["cat", "dog"] and not parts.exists()
    for (c, i), image in made.items():
        assert torch.equal(read_rgb(root / ["cat", "dog"][c] / f"{i:05d}.png"), image)
    with pytest.raises(FileExistsError):
        script.assemble(parts, [2, 3], ["cat", "dog"], tmp_path / "out")
