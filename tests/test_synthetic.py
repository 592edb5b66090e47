"""Synthetic mixing modes, the offline generator, the disk cache, folder and Stable Diffusion paths."""

import importlib.util

import numpy as np
import pytest
import torch

from wdiv.training.generators import (
    FolderGenerator,
    Generator,
    PcaGmmGenerator,
    StableDiffusionGenerator,
    cached_generate,
    write_image_folder,
)
from wdiv.training.synthetic import build_synthetic_train


class _Images(torch.utils.data.Dataset):
    def __init__(self, images, labels, classes=None):
        self.images, self.labels = images, labels
        if classes:
            self.classes = classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _real(n_per_class=(30, 20, 10), size=12, seed=0):
    """Three classes of noisy stripes (horizontal, vertical, diagonal): easy to tell apart."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    patterns = [(yy % 4 < 2), (xx % 4 < 2), ((xx + yy) % 4 < 2)]
    images, labels = [], []
    for c, n in enumerate(n_per_class):
        base = patterns[c].float() * 180 + 40
        noise = torch.randn((n, 3, size, size), generator=g) * 20
        images.append((base + noise).clamp(0, 255).to(torch.uint8))
        labels += [c] * n
    return _Images(torch.cat(images), torch.tensor(labels), classes=["h", "v", "d"])


OFFLINE = {"name": "pca_gmm", "pca_components": 8, "mixture_components": 2}


@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
def test_replace_keeps_size_and_class_counts(p):
    real = _real()
    out = build_synthetic_train(real, {"mode": "replace", "p": p, "generator": OFFLINE}, seed=0, num_classes=3)
    assert len(out) == len(real)
    assert torch.equal(torch.bincount(out.labels), torch.bincount(real.labels))  # stratified, labels kept
    n_syn = round(p * len(real))
    assert out.info == {"mode": "replace", "filter": False, "p": p, "generator": "pca_gmm", "n_real": 60 - n_syn, "n_synthetic": n_syn}
    assert out.is_synthetic.sum() == n_syn
    # real rows untouched, replaced rows differ from what they replaced
    keep = ~out.is_synthetic
    assert torch.equal(out.images[keep], real.images[keep])
    assert (out.images[out.is_synthetic] != real.images[out.is_synthetic]).any()
    x, y = out[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 12, 12) and isinstance(y, int)
    if p == 1.0:
        assert out.info["n_real"] == 0


def test_add_appends_in_class_proportion_and_aligns_rows():
    real = _real()
    out = build_synthetic_train(real, {"mode": "add", "p": 0.5, "generator": OFFLINE}, seed=0, num_classes=3)
    assert len(out) == 90 and out.info["n_synthetic"] == 30 and out.info["n_real"] == 60
    assert torch.equal(out.images[:60], real.images)
    assert torch.bincount(out.labels[60:]).tolist() == [15, 10, 5]
    assert out.fidelity_rows.tolist() == [False] * 60 + [True] * 30
    # every appended row is aligned with a real image of its own class
    assert torch.equal(real.labels[out.real_index[60:]], out.labels[60:])


class _HalfWrong(Generator):
    """Even outputs: real images of the asked class; odd outputs: real images of the next class."""

    name = "half_wrong"
    cacheable = False

    def fit(self, images, labels, *, class_names, seed):
        self.images, self.labels = images, labels

    def generate(self, counts, *, seed):
        xs, ys = [], []
        for c, n in enumerate(counts):
            for i in range(n):
                src = c if i % 2 == 0 else (c + 1) % 3
                pool = self.images[self.labels == src]
                xs.append(pool[i % len(pool)])
                ys.append(c)
        return torch.stack(xs), torch.tensor(ys)


def test_add_filter_drops_images_the_real_classifier_rejects():
    real = _real()
    out = build_synthetic_train(
        real, {"mode": "add", "filter": True, "p": 0.5, "threshold": 0.6, "oversample": 2.0},
        seed=0, num_classes=3, generator=_HalfWrong({}),
    )
    assert out.info["n_synthetic"] == 30 and len(out) == 90
    assert (out.info["mode"], out.info["filter"], out.info["threshold"]) == ("add", True, 0.6)
    assert torch.bincount(out.labels[60:]).tolist() == [15, 10, 5]
    # each kept image is a real image of the class it is labelled with (mislabelled ones dropped)
    for x, y in zip(out.images[60:], out.labels[60:]):
        same = (real.images == x).flatten(1).all(1)
        assert set(real.labels[same].tolist()) == {int(y)}


def test_filtered_is_an_alias_for_add_with_filter():
    real = _real()
    knobs = {"p": 0.5, "threshold": 0.6, "oversample": 2.0}
    alias = build_synthetic_train(real, {"mode": "filtered", **knobs}, seed=0, num_classes=3, generator=_HalfWrong({}))
    spelled = build_synthetic_train(real, {"mode": "add", "filter": True, **knobs}, seed=0, num_classes=3, generator=_HalfWrong({}))
    assert alias.info == spelled.info and alias.info["mode"] == "add"
    assert torch.equal(alias.images, spelled.images) and torch.equal(alias.labels, spelled.labels)
    assert np.array_equal(alias.real_index, spelled.real_index)


def test_replace_from_a_short_filtered_pool_keeps_the_real_share():
    """Half the pool is mislabelled and there is no oversampling: the rows it cannot fill are dropped."""
    real = _real()
    out = build_synthetic_train(
        real, {"mode": "replace", "filter": True, "p": 0.5, "threshold": 0.6, "oversample": 1.0},
        seed=0, num_classes=3, generator=_HalfWrong({}),
    )
    kept = [8, 5, 3]  # the even (correct) outputs of 15, 10, 5 asked for
    assert out.info["n_synthetic"] == sum(kept) and out.info["n_real"] == 30  # (1 - p) of the 60 real images
    assert torch.bincount(out.labels).tolist() == [30 - 15 + 8, 20 - 10 + 5, 10 - 5 + 3]
    real_rows = ~out.is_synthetic
    assert torch.equal(out.images[real_rows], real.images[out.real_index[real_rows]])
    assert torch.equal(out.labels, real.labels[out.real_index])  # a generated row stands for a real one of its class
    assert out.fidelity_rows.all() and len(out.real_index) == len(out) == 46


def test_bad_mode_and_p_name_the_key():
    real = _real()
    with pytest.raises(ValueError, match="synth.mode"):
        build_synthetic_train(real, {"mode": "double", "p": 0.5, "generator": OFFLINE}, seed=0)
    with pytest.raises(ValueError, match="synth.p"):
        build_synthetic_train(real, {"mode": "replace", "p": 1.5, "generator": OFFLINE}, seed=0)
    with pytest.raises(ValueError, match="synth.p: 'lots' is not a number"):
        build_synthetic_train(real, {"mode": "add", "p": "lots", "generator": OFFLINE}, seed=0)
    with pytest.raises(ValueError, match="synth.threshold"):
        build_synthetic_train(real, {"mode": "filtered", "p": 0.5, "threshold": 2, "generator": OFFLINE}, seed=0)
    with pytest.raises(ValueError, match="synth.filter: true or false; its threshold and oversample are synth.threshold"):
        build_synthetic_train(real, {"mode": "add", "p": 0.5, "filter": {"threshold": 0.5}, "generator": OFFLINE}, seed=0)
    with pytest.raises(ValueError, match="synth.filter: 'yes' is not true or false"):
        build_synthetic_train(real, {"mode": "add", "p": 0.5, "filter": "yes", "generator": OFFLINE}, seed=0)
    with pytest.raises(ValueError, match="synth.generator.name"):
        build_synthetic_train(real, {"mode": "add", "p": 0.5, "generator": {"name": "gan"}}, seed=0)


def test_offline_generator_is_deterministic_per_seed_and_nested():
    real = _real()

    def sample(seed, counts):
        g = PcaGmmGenerator(OFFLINE)
        g.fit(real.images, real.labels, class_names=None, seed=seed)
        return g.generate(counts, seed=seed)

    a, la = sample(0, [4, 3, 2])
    b, _ = sample(0, [4, 3, 2])
    c, _ = sample(1, [4, 3, 2])
    assert a.dtype == torch.uint8 and a.shape == (9, 3, 12, 12) and la.tolist() == [0] * 4 + [1] * 3 + [2] * 2
    assert torch.equal(a, b) and not torch.equal(a, c)
    big, _ = sample(0, [8, 3, 2])
    assert torch.equal(big[:4], a[:4])  # more images of a class extend the smaller request
    # the samples look like their class: nearest real-class mean matches the label
    means = torch.stack([real.images[real.labels == k].float().mean(0) for k in range(3)])
    nearest = torch.cdist(a.float().flatten(1), means.flatten(1)).argmin(1)
    assert (nearest == la).float().mean() >= 0.8


def test_cache_round_trip(tmp_path):
    real = _real()
    gen = PcaGmmGenerator(OFFLINE)
    x1, y1 = cached_generate(gen, real.images, real.labels, [3, 2, 1], seed=0, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no tmp leftovers

    class _NoGenerate(PcaGmmGenerator):
        def generate(self, counts, *, seed):
            raise AssertionError("should have come from the cache")

    x2, y2 = cached_generate(_NoGenerate(OFFLINE), real.images, real.labels, [3, 2, 1], seed=0, cache_dir=tmp_path)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # another seed or another config is another entry
    cached_generate(gen, real.images, real.labels, [3, 2, 1], seed=1, cache_dir=tmp_path)
    cached_generate(PcaGmmGenerator({**OFFLINE, "temperature": 0.5}), real.images, real.labels, [3, 2, 1], seed=0, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3


def test_folder_round_trip_and_errors(tmp_path):
    real = _real()
    root = write_image_folder(real.images, real.labels, tmp_path / "gen", class_names=["h", "v", "d"])
    assert sorted(p.name for p in root.iterdir()) == ["classes.json", "d", "h", "v"]
    del real.classes  # labels come back through classes.json, not through the dataset's class names
    assert len(list((root / "v").glob("*.png"))) == 20
    with pytest.raises(FileExistsError):
        write_image_folder(real.images, real.labels, root)
    out = build_synthetic_train(real, {"mode": "add", "p": 0.5, "generator": {"name": "folder", "root": str(root)}}, seed=0)
    assert out.info["generator"] == "folder" and torch.bincount(out.labels[60:]).tolist() == [15, 10, 5]
    for x, y in zip(out.images[60:], out.labels[60:]):  # the PNGs are lossless: each is a real image of its class
        same = (real.images == x).flatten(1).all(1)
        assert same.any() and set(real.labels[same].tolist()) == {int(y)}
    with pytest.raises(ValueError, match="synth.generator.root: .* has 30 images, 60 needed"):
        build_synthetic_train(real, {"mode": "add", "p": 2.0, "generator": {"name": "folder", "root": str(root)}}, seed=0)
    with pytest.raises(ValueError, match="synth.generator.root: no such directory"):
        FolderGenerator({"name": "folder", "root": str(tmp_path / "missing")})


class _StandInPipeline:
    """Called like a diffusers text-to-image pipeline; returns solid images, one grey per prompt."""

    def __init__(self):
        self.calls = []

    def __call__(self, *, prompt, num_inference_steps, guidance_scale, height, width, generator, output_type, negative_prompt=None):
        assert output_type == "np" and isinstance(generator, torch.Generator)
        self.calls.append(list(prompt))
        shade = (hash(prompt[0]) % 200 + 20) / 255
        images = np.full((len(prompt), height, width, 3), shade, dtype=np.float32)

        class _Out:
            pass

        out = _Out()
        out.images = images
        return out


def test_stable_diffusion_path_with_stand_in_pipeline(tmp_path):
    pipe = _StandInPipeline()
    gen = StableDiffusionGenerator(
        {"name": "stable_diffusion", "height": 24, "width": 20, "batch_size": 2, "prompt": "a photo of {name} stripes"},
        pipeline=pipe,
    )
    gen.fit(torch.zeros((1, 3, 12, 12), dtype=torch.uint8), torch.zeros(1), class_names=["h", "v", "d"], seed=0)
    images, labels = gen.generate([3, 0, 2], seed=0)
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 24, 20)
    assert labels.tolist() == [0, 0, 0, 2, 2]
    assert pipe.calls == [["a photo of h stripes"] * 2, ["a photo of h stripes"], ["a photo of d stripes"] * 2]
    root = write_image_folder(images, labels, tmp_path / "sd", class_names=["h", "v", "d"])
    assert sorted(p.name for p in root.iterdir()) == ["classes.json", "d", "h"]
    assert sorted(p.name for p in (root / "h").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    # mixed in: resized to the real images' size
    real = _real()
    out = build_synthetic_train(real, {"mode": "replace", "p": 0.1}, seed=0, generator=StableDiffusionGenerator(
        {"name": "stable_diffusion", "height": 24, "width": 24}, pipeline=_StandInPipeline()))
    assert out.images.shape == real.images.shape and out.info["generator"] == "stable_diffusion"


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is not None, reason="diffusers installed")
def test_stable_diffusion_without_diffusers_says_which_extra():
    gen = StableDiffusionGenerator({"name": "stable_diffusion", "class_names": ["a"]})
    with pytest.raises(ValueError, match=r"synth.generator.name=stable_diffusion needs diffusers: .*wdiv\[gen\]"):
        gen.generate([1], seed=0)


def _script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "generate_synthetic.py"
    spec = importlib.util.spec_from_file_location("generate_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_synthetic_script_writes_a_folder_the_folder_generator_reads(tmp_path):
    script = _script()
    out = tmp_path / "sd"
    argv = ["--out", str(out), "--classes", "h,v,d", "--per-class", "12", "--resolution", "16", "--size", "12"]
    assert script.main(argv, pipeline=_StandInPipeline()) == 0
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "d", "h", "v"]
    assert script.main(argv, pipeline=_StandInPipeline()) == 2  # refuses to overwrite, before generating
    real = _real()
    del real.classes  # e.g. CIFAR tensors: no class names on the dataset
    mixed = build_synthetic_train(real, {"mode": "replace", "p": 0.3, "generator": {"name": "folder", "root": str(out)}}, seed=0)
    assert mixed.info["n_synthetic"] == 18 and mixed.images.shape == real.images.shape


@pytest.mark.parametrize("bad, says", [(["--per-class", "0"], "--per-class"), (["--classes", " , "], "--classes"),
                                       (["--resolution", "20"], "--resolution"), (["--batch-size", "0"], "--batch-size")])
def test_generate_synthetic_script_checks_options_before_any_work(tmp_path, capsys, bad, says):
    class Untouchable:
        def __call__(self, *a, **k):
            raise AssertionError("the pipeline ran despite a bad option")

    argv = ["--out", str(tmp_path / "sd"), "--classes", "h,v", "--per-class", "2", "--resolution", "16", *bad]
    assert _script().main(argv, pipeline=Untouchable()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"generate_synthetic: error: {says}")
    assert not (tmp_path / "sd").exists()
