"""Image-folder datasets decoded lazily: one image per item, at its stored size (optionally capped).

Nothing is decoded up front: a dataset holds (path, label) pairs and decodes an image when it is
asked for it, so a DomainNet domain costs a list of paths in RAM, never its pixels at 224 px.
The resize to the model's input happens later, after augmentation (see ``aug.at``).

Layouts read here:

* ``data=imagefolder``: ``train_root`` / ``test_root`` (/ ``val_root``) / named ``ood_roots``,
  each ``<root>/<class>/<image>`` (torchvision's ImageFolder layout).
* ``data=domainnet`` / ``data=office_home``: ``<root>/<domain>/<class>/<image>``. Fine-tuning
  uses ``data.train_domain``; every other domain is an OOD set. Labels follow the training
  domain's class folders by name (sorted, as ImageFolder numbers them); another domain may lack
  a class, but a class folder the training domain does not have is refused, naming the domain.
  DomainNet's ``<root>/<domain>_train.txt`` / ``_test.txt`` split lists are used when present
  (``data.split_files=auto``): the training domain's test list is the in-domain test split and
  each other domain's test list its OOD set. Without them the training domain's test split is a
  seeded stratified ``data.test_fraction`` and each other domain is scored on all its images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from wdiv.errors import ConfigError
from wdiv.training.datasets import stratified_split
from wdiv.training.splits import LabelledSubset, Splits

log = logging.getLogger(__name__)

Sample = tuple[str, int]


def decode(path: str, *, size: int | None = None, max_side: int | None = None) -> torch.Tensor:
    """One image file as uint8 RGB [3, H, W]: ``size`` x ``size`` when given, else its stored size
    with the longer side brought down to ``max_side`` (aspect kept) when it is larger."""
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor, resize

    with Image.open(path) as pil:
        target = size or max_side
        if target:
            pil.draft("RGB", (target, target))  # JPEG: decode at a reduced scale, still >= target
        image = pil_to_tensor(pil.convert("RGB"))
    h, w = image.shape[-2:]
    if size:
        return resize(image, [size, size], antialias=True)
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        return resize(image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
    return image


class FolderImages(Dataset):
    """(path, label) samples decoded per item; ``classes[label]`` names the label."""

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], *, size: int | None = None, max_side: int | None = None):
        self.samples = list(samples)
        self.classes = list(classes)
        self.size = int(size) if size else None
        self.max_side = int(max_side) if max_side else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return decode(path, size=self.size, max_side=self.max_side), label

    @property
    def image_size(self) -> int | None:
        """The side every image has, or None when each keeps its own size."""
        return self.size

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


def _directory(key: str, value) -> Path:
    if value is None or str(value) in ("", "???"):
        raise ConfigError(f"{key}: required")
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{key}: directory {path} does not exist")
    return path


def class_folders(root: Path, where: str) -> list[str]:
    """The class folders of ``root``, sorted (ImageFolder's label order)."""
    from torchvision.datasets.folder import find_classes

    try:
        return list(find_classes(str(root))[0])
    except FileNotFoundError:
        raise ConfigError(f"{where}: no class folders in {root}") from None


def folder_samples(root: Path, classes: Sequence[str] | None, where: str) -> tuple[list[str], list[Sample]]:
    """(class names, samples) of ``root/<class>/<image>``; labels follow ``classes`` by name when
    given (a class folder outside it is refused with one line naming ``where``)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    found = class_folders(root, where)
    names = list(found) if classes is None else list(classes)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ConfigError(f"{where}: {root} has class folders the training set does not have: {unknown[:5]}")
    index = {c: i for i, c in enumerate(names)}
    samples = make_dataset(str(root), {c: index[c] for c in found}, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise ConfigError(f"{where}: no images ({', '.join(IMG_EXTENSIONS)}) under {root}")
    return names, samples


def decode_options(data_cfg) -> dict:
    """FolderImages' size options from ``data.image_size`` (a fixed square) and ``data.max_side``."""
    size = data_cfg.get("image_size")
    return {"size": int(size) if size else None, "max_side": data_cfg.get("max_side")}


def val_split(train: FolderImages, data_cfg) -> tuple[Dataset, Dataset]:
    """(train part, val part): a seeded stratified ``data.val_fraction`` of ``train``."""
    labels = torch.tensor(train.targets)
    val_idx, train_idx = stratified_split(labels, [float(data_cfg.val_fraction)], int(data_cfg.split_seed))
    return LabelledSubset(train, train_idx.tolist()), LabelledSubset(train, val_idx.tolist())


def folder_splits(data_cfg, *, name: str, train: tuple[str, object], test: tuple[str, object], val: tuple[str, object] | None = None, ood: dict | None = None) -> Splits:
    """Splits from class-folder roots, each given as (config key, path) so errors name the key;
    val is a stratified slice of train when no val root is given."""
    opts = decode_options(data_cfg)

    def folder(key: str, root, classes=None) -> FolderImages:
        names, samples = folder_samples(_directory(key, root), classes, key)
        return FolderImages(samples, names, **opts)

    train_all = folder(*train)
    test_set = folder(*test, train_all.classes)
    if val is not None and val[1]:
        train_set, val_set = train_all, folder(*val, train_all.classes)
    else:
        train_set, val_set = val_split(train_all, data_cfg)
    ood_sets = {str(n): folder(f"data.ood_roots.{n}", root, train_all.classes) for n, root in (ood or {}).items()}
    return Splits(
        name=name,
        train=train_set,
        val=val_set,
        test=test_set,
        num_classes=len(train_all.classes),
        image_size=opts["size"],
        ood=ood_sets,
        classes=train_all.classes,
    )


def imagefolder_splits(data_cfg, *, task: str) -> Splits:
    """train/test roots (val root optional, else a stratified slice of train) plus named OOD roots."""
    if task == "source":
        raise ConfigError("model.pretrained: builtin needs a dataset with a source task (use data=digits or a weights path)")
    return folder_splits(
        data_cfg,
        name=str(data_cfg.get("id") or "imagefolder"),
        train=("data.train_root", data_cfg.get("train_root")),
        test=("data.test_root", data_cfg.get("test_root")),
        val=("data.val_root", data_cfg.get("val_root")),
        ood=dict(data_cfg.get("ood_roots") or {}),
    )


def domains_of(root: Path, data_cfg) -> list[str]:
    """``data.domains``, else every sub-folder of ``root`` (sorted)."""
    given = data_cfg.get("domains")
    if given:
        domains = [str(d) for d in given]
        missing = [d for d in domains if not (root / d).is_dir()]
        if missing:
            raise ConfigError(f"data.domains: {missing[0]!r} is not a folder of {root}")
        return domains
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_list(root: Path, domain: str, part: str, data_cfg) -> Path | None:
    """``root/<domain>_<part>.txt`` when split lists are in use and it exists."""
    mode = str(data_cfg.get("split_files", "auto")).lower()
    if mode in ("false", "none", "off"):
        return None
    path = root / f"{domain}_{part}.txt"
    if path.is_file():
        return path
    if mode == "true":
        raise ConfigError(f"data.split_files: {path} does not exist")
    return None


def read_split_list(path: Path, root: Path, classes: Sequence[str], domain: str) -> list[Sample]:
    """Samples of a DomainNet split list (``<domain>/<class>/<file> <label>`` per line); the label is
    taken from the class folder's name, so it always agrees with the folder layout."""
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rel = Path(line.split()[0])
        if len(rel.parts) < 3:
            raise ConfigError(f"{path}:{n}: expected <domain>/<class>/<file>, got {line.strip()!r}")
        cls = rel.parts[-2]
        if cls not in index:
            raise ConfigError(f"data.root: domain {domain!r} lists class {cls!r} ({path.name}:{n}) that the training domain does not have")
        samples.append((str(root / rel), index[cls]))
    if not samples:
        raise ConfigError(f"{path}: no images listed")
    return samples


def domain_splits(data_cfg, *, task: str) -> Splits:
    """Fine-tune on ``data.train_domain``; every other domain of ``data.root`` is an OOD set."""
    name = str(data_cfg.name)
    if task == "source":
        raise ConfigError(f"model.pretrained: builtin needs a dataset with a source task; {name} has none (use hub, none or a weights file)")
    root = _directory("data.root", data_cfg.get("root"))
    domains = domains_of(root, data_cfg)
    train_domain = str(data_cfg.get("train_domain"))
    if train_domain not in domains:
        raise ConfigError(f"data.train_domain: {train_domain!r} is not a domain of {root} (found: {', '.join(domains) or 'none'})")
    opts = decode_options(data_cfg)
    train_list, test_list = _split_list(root, train_domain, "train", data_cfg), _split_list(root, train_domain, "test", data_cfg)
    if train_list is not None and test_list is not None:  # the lists name the images: no walk of the tree
        classes = class_folders(root / train_domain, f"data.train_domain ({train_domain})")
        fit = FolderImages(read_split_list(train_list, root, classes, train_domain), classes, **opts)
        test = FolderImages(read_split_list(test_list, root, classes, train_domain), classes, **opts)
        held_out = test_list.name
    else:
        classes, samples = folder_samples(root / train_domain, None, f"data.train_domain ({train_domain})")
        labels = torch.tensor([label for _, label in samples])
        test_idx, fit_idx = stratified_split(labels, [float(data_cfg.test_fraction)], int(data_cfg.split_seed))
        fit = FolderImages([samples[i] for i in fit_idx.tolist()], classes, **opts)
        test = FolderImages([samples[i] for i in test_idx.tolist()], classes, **opts)
        held_out = f"stratified {float(data_cfg.test_fraction):g}"
    train, val = val_split(fit, data_cfg)
    ood = {}
    for domain in domains:
        if domain == train_domain:
            continue
        where = f"data.root: domain {domain!r}"
        listed = _split_list(root, domain, "test", data_cfg)
        if listed is not None:
            ood[domain] = FolderImages(read_split_list(listed, root, classes, domain), classes, **opts)
        else:
            _, samples = folder_samples(root / domain, classes, where)
            ood[domain] = FolderImages(samples, classes, **opts)
        missing = len(classes) - len({label for _, label in ood[domain].samples})
        if missing:
            log.warning("%s: domain %s lacks %d of the %d classes of %s", name, domain, missing, len(classes), train_domain)
    if not ood:
        raise ConfigError(f"data.root: {root} has no domain besides {train_domain!r} to score out of distribution")
    log.info("%s: train on %s (%d train / %d val / %d test, %s), OOD on %s", name, train_domain, len(train), len(val), len(test), held_out, ", ".join(ood))
    return Splits(
        name=str(data_cfg.get("id") or name),
        train=train,
        val=val,
        test=test,
        num_classes=len(classes),
        image_size=opts["size"],
        ood=ood,
        classes=classes,
        run_info={"domains": {"train": train_domain, "ood": list(ood), "test": held_out}},
    )
