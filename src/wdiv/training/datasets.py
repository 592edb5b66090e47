"""In-memory raw datasets: scikit-learn digits (offline default) and CIFAR-10/100 from the
standard local files; the stratified splitting every builder shares.

Image folders (decoded lazily) live in :mod:`wdiv.training.image_folders`, Stanford Cars in
:mod:`wdiv.training.stanford_cars`, CIFAR-10-C / CIFAR-100-C in :mod:`wdiv.training.cifar_c`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from wdiv.errors import ConfigError
from wdiv.training.splits import Splits, TensorImages, cache_root


def stratified_split(labels: torch.Tensor, fractions: list[float], seed: int) -> list[torch.Tensor]:
    """Split indices class by class into len(fractions)+1 parts (the last takes the rest); fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        start = 0
        for k, frac in enumerate(fractions):
            n = int(round(frac * len(idx)))
            parts[k].append(idx[start : start + n])
            start += n
        parts[-1].append(idx[start:])
    return [torch.sort(torch.cat(p)).values for p in parts]


def select_classes(images, labels, classes):
    """Keep ``classes`` (a list of original labels) and relabel them 0..k-1 in that order."""
    if classes is None:
        return images, labels
    classes = list(classes)
    keep = torch.isin(labels, torch.tensor(classes))
    remap = {c: i for i, c in enumerate(classes)}
    new = torch.tensor([remap[int(v)] for v in labels[keep]], dtype=torch.int64)
    return images[keep], new


def class_names(names, classes) -> list[str]:
    """The names of the selected ``classes`` (original labels) in their new label order."""
    return [str(n) for n in names] if classes is None else [str(names[int(c)]) for c in classes]


def task_classes(data_cfg, task: str):
    """The original labels of ``task``'s classes (None: all), from data.source_classes / target_classes."""
    key = "source_classes" if task == "source" else "target_classes"
    classes = data_cfg.get(key)
    if task == "source" and classes is None:
        raise ConfigError(f"data.source_classes: dataset {data_cfg.name!r} has no source task for a builtin pretrained model")
    return classes


def _tensor_splits(name, images, labels, names, data_cfg, task) -> Splits:
    selected = task_classes(data_cfg, task)
    images, labels = select_classes(images, labels, selected)
    names = class_names(names, selected)
    val_frac, test_frac = float(data_cfg.val_fraction), float(data_cfg.test_fraction)
    test_idx, val_idx, train_idx = stratified_split(labels, [test_frac, val_frac], int(data_cfg.split_seed))
    part = lambda idx: TensorImages(images[idx], labels[idx], names)  # noqa: E731
    return Splits(
        name=name,
        train=part(train_idx),
        val=part(val_idx),
        test=part(test_idx),
        num_classes=int(labels.max()) + 1,
        image_size=int(images.shape[-1]),
        classes=names,
    )


def _digits_8x8(paths_cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits as uint8 [N, 8, 8] (0..255); cached so later runs skip importing sklearn."""
    from safetensors.torch import load_file, save_file

    from wdiv.io import atomic_path

    path = cache_root(paths_cfg) / "data" / "digits8x8.safetensors"
    if path.exists():
        t = load_file(str(path))
        return t["images"], t["labels"]
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images).mul(255.0 / 16.0).round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(d.target).to(torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"images": images.contiguous(), "labels": labels}, str(tmp))
    return images, labels


def digits_splits(data_cfg, paths_cfg, *, task: str) -> Splits:
    """Digits upscaled to ``data.image_size`` (bilinear) and repeated to 3 channels."""
    small, labels = _digits_8x8(paths_cfg)
    size = int(data_cfg.image_size)
    big = F.interpolate(small[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    images = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return _tensor_splits("digits", images, labels, [str(d) for d in range(10)], data_cfg, task)


def cifar_class(name: str, check_md5: bool):
    """torchvision's CIFAR-10/100 reader; with ``check_md5=False`` a subclass whose file lists carry
    no checksum, which torchvision's ``check_integrity`` takes as "the file exists" (a re-packed
    copy or a test fixture in the standard pickle format reads the same way)."""
    import torchvision

    base = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    if check_md5:
        return base
    return type(f"{base.__name__}Unchecked", (base,), {
        "train_list": [[f, None] for f, _ in base.train_list],
        "test_list": [[f, None] for f, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })


def cifar_splits(data_cfg, paths_cfg, *, task: str) -> Splits:
    """CIFAR-10/100 from the standard python pickles under ``data.root`` (``cifar-10-batches-py`` /
    ``cifar-100-python``), read by torchvision; class names from the meta file. Downloads only
    with ``data.download=true``; ``data.check_md5=false`` skips torchvision's checksum of the files."""
    root = Path(str(data_cfg.root)).expanduser()
    cls = cifar_class(str(data_cfg.name), bool(data_cfg.get("check_md5", True)))
    try:
        train = cls(str(root), train=True, download=bool(data_cfg.download))
        test = cls(str(root), train=False, download=bool(data_cfg.download))
    except RuntimeError as err:
        raise ConfigError(f"data.root: {data_cfg.name} not found or corrupted under {root} ({err}; data.download=true fetches it, data.check_md5=false reads files that differ from the published ones)") from None
    selected = task_classes(data_cfg, task)
    names = class_names(train.classes, selected)
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    tr_img, tr_lab = select_classes(to_t(train.data), torch.tensor(train.targets), selected)
    te_img, te_lab = select_classes(to_t(test.data), torch.tensor(test.targets), selected)
    val_idx, train_idx = stratified_split(tr_lab, [float(data_cfg.val_fraction)], int(data_cfg.split_seed))
    return Splits(
        name=str(data_cfg.name),
        train=TensorImages(tr_img[train_idx], tr_lab[train_idx], names),
        val=TensorImages(tr_img[val_idx], tr_lab[val_idx], names),
        test=TensorImages(te_img, te_lab, names),
        num_classes=len(names),
        image_size=32,
        classes=names,
    )
