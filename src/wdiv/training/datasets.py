"""Concrete raw datasets: scikit-learn digits (offline default), CIFAR-10/100, image folders."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from wdiv.errors import ConfigError
from wdiv.training.splits import Splits, TensorImages, cache_root

log = logging.getLogger(__name__)


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


def _select_classes(images, labels, classes):
    """Keep ``classes`` (a list of original labels) and relabel them 0..k-1 in that order."""
    if classes is None:
        return images, labels
    classes = list(classes)
    keep = torch.isin(labels, torch.tensor(classes))
    remap = {c: i for i, c in enumerate(classes)}
    new = torch.tensor([remap[int(v)] for v in labels[keep]], dtype=torch.int64)
    return images[keep], new


def _task_classes(data_cfg, task: str):
    key = "source_classes" if task == "source" else "target_classes"
    classes = data_cfg.get(key)
    if task == "source" and classes is None:
        raise ConfigError(f"data.source_classes: dataset {data_cfg.name!r} has no source task for a builtin pretrained model")
    return classes


def _tensor_splits(name, images, labels, data_cfg, task) -> Splits:
    images, labels = _select_classes(images, labels, _task_classes(data_cfg, task))
    val_frac, test_frac = float(data_cfg.val_fraction), float(data_cfg.test_fraction)
    test_idx, val_idx, train_idx = stratified_split(labels, [test_frac, val_frac], int(data_cfg.split_seed))
    part = lambda idx: TensorImages(images[idx], labels[idx])  # noqa: E731
    return Splits(
        name=name,
        train=part(train_idx),
        val=part(val_idx),
        test=part(test_idx),
        num_classes=int(labels.max()) + 1,
        image_size=int(images.shape[-1]),
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
    return _tensor_splits("digits", images, labels, data_cfg, task)


def cifar_splits(data_cfg, paths_cfg, *, task: str) -> Splits:
    """CIFAR-10/100 from torchvision; downloads only with ``data.download=true``."""
    import torchvision

    root = Path(str(data_cfg.root)).expanduser()
    cls = torchvision.datasets.CIFAR10 if data_cfg.name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        train = cls(str(root), train=True, download=bool(data_cfg.download))
        test = cls(str(root), train=False, download=bool(data_cfg.download))
    except RuntimeError as err:
        raise ConfigError(f"data.root: {data_cfg.name} not found under {root} (set data.download=true to fetch it): {err}") from None
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    tr_img, tr_lab = _select_classes(to_t(train.data), torch.tensor(train.targets), _task_classes(data_cfg, task))
    te_img, te_lab = _select_classes(to_t(test.data), torch.tensor(test.targets), _task_classes(data_cfg, task))
    val_idx, train_idx = stratified_split(tr_lab, [float(data_cfg.val_fraction)], int(data_cfg.split_seed))
    return Splits(
        name=data_cfg.name,
        train=TensorImages(tr_img[train_idx], tr_lab[train_idx]),
        val=TensorImages(tr_img[val_idx], tr_lab[val_idx]),
        test=TensorImages(te_img, te_lab),
        num_classes=int(tr_lab.max()) + 1,
        image_size=32,
    )


class FolderImages(Dataset):
    """An ImageFolder tree decoded to uint8 RGB [3, S, S]; labels follow ``classes`` (by folder name)."""

    def __init__(self, root: Path, size: int, classes: list[str] | None = None):
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(str(root), loader=lambda p: p)
        self.classes = classes if classes is not None else list(folder.classes)
        unknown = sorted(set(folder.classes) - set(self.classes))
        if unknown:
            raise ConfigError(f"data: folder {root} has classes not in the training set: {unknown[:5]}")
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(p, index[folder.classes[t]]) for p, t in folder.samples]
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor, resize

        path, label = self.samples[i]
        with Image.open(path) as pil:
            image = pil_to_tensor(pil.convert("RGB"))
        return resize(image, [self.size, self.size], antialias=True), label

    @property
    def image_size(self) -> int:
        return self.size


def _folder(key: str, root, size: int, classes=None) -> FolderImages:
    if root is None:
        raise ConfigError(f"{key}: required for data=imagefolder")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{key}: directory {path} does not exist")
    return FolderImages(path, size, classes)


def imagefolder_splits(data_cfg, *, task: str) -> Splits:
    """train/test roots (val root optional, else a stratified slice of train) plus named OOD roots."""
    if task == "source":
        raise ConfigError("model.pretrained: builtin needs a dataset with a source task (use data=digits or a weights path)")
    size = int(data_cfg.image_size)
    train = _folder("data.train_root", data_cfg.train_root, size)
    test = _folder("data.test_root", data_cfg.test_root, size, train.classes)
    if data_cfg.get("val_root"):
        val, train_part = _folder("data.val_root", data_cfg.val_root, size, train.classes), train
    else:
        labels = torch.tensor([lab for _, lab in train.samples])
        val_idx, train_idx = stratified_split(labels, [float(data_cfg.val_fraction)], int(data_cfg.split_seed))
        val, train_part = Subset(train, val_idx.tolist()), Subset(train, train_idx.tolist())
    ood = {str(name): _folder(f"data.ood_roots.{name}", root, size, train.classes) for name, root in (data_cfg.get("ood_roots") or {}).items()}
    return Splits(
        name=str(data_cfg.get("id", "imagefolder")),
        train=train_part,
        val=val,
        test=test,
        num_classes=len(train.classes),
        image_size=size,
        ood=ood,
    )
