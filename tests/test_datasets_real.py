"""The study's datasets from local files, on fixtures in their real on-disk formats: CIFAR pickles
(class names from the meta file), CIFAR-C .npy files, DomainNet/Office-Home domain trees and
Stanford Cars' .mat layout; images decoded lazily; bad config keys named in one line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from _data_fixtures import CIFAR10_NAMES, write_cifar10, write_cifar100, write_cifar_c, write_domains, write_stanford_cars
from wdiv.errors import ConfigError
from wdiv.train import CONFIG_DIR
from wdiv.training.data import build_splits
from wdiv.training.image_folders import FolderImages

TINY = ["model=vit_micro", "model.pretrained=none", "trainer.epochs=1", "trainer.progress=false", "diversity.compute=false"]


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def splits_of(*overrides: str):
    cfg = cfg_of(*overrides)
    return build_splits(cfg.data, cfg.paths, task="target")


def chw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def test_cifar10_files_round_trip_with_class_names_from_the_meta_file(tmp_path):
    written = write_cifar10(tmp_path)
    splits = splits_of("data=cifar10", f"data.root={tmp_path}", "data.check_md5=false", "data.corruptions={}", "data.val_fraction=0.2")
    assert splits.classes == CIFAR10_NAMES and splits.num_classes == 10 and splits.image_size == 32
    assert splits.train.classes == CIFAR10_NAMES and splits.test.classes == CIFAR10_NAMES
    assert torch.equal(splits.test.images, chw(written["test"]))  # pixels and channel order as stored
    assert splits.test.labels.tolist() == written["test_y"]
    assert len(splits.train) + len(splits.val) == 50 and len(splits.val) == 10  # one of each class's five
    # every training image is a written one, under its own label
    rows = {chw(written["train"])[i].numpy().tobytes(): y for i, y in enumerate(written["train_y"])}
    for part in (splits.train, splits.val):
        for image, label in zip(part.images, part.labels.tolist()):
            assert rows[image.numpy().tobytes()] == label


def test_cifar100_files_and_target_classes_keep_the_names_of_the_chosen_classes(tmp_path):
    written = write_cifar100(tmp_path, n_train=200, n_test=100)
    splits = splits_of("data=cifar100", f"data.root={tmp_path}", "data.check_md5=false", "data.corruptions={}", "data.target_classes=[7,3]")
    assert splits.classes == ["class007", "class003"] and splits.num_classes == 2
    keep = [i for i, y in enumerate(written["test_y"]) if y in (7, 3)]
    assert torch.equal(splits.test.images, chw(written["test"][keep]))
    assert splits.test.labels.tolist() == [0 if written["test_y"][i] == 7 else 1 for i in keep]


def test_cifar_files_that_fail_the_checksum_name_data_root(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(ConfigError, match=r"^data\.root: cifar10 not found or corrupted .*check_md5=false"):
        splits_of("data=cifar10", f"data.root={tmp_path}")


def test_cifar_c_is_read_memory_mapped_per_corruption_and_severity(tmp_path):
    written = write_cifar10(tmp_path / "c10")
    arrays = write_cifar_c(tmp_path / "c10c", written["test_y"])
    splits = splits_of("data=cifar10", f"data.root={tmp_path / 'c10'}", "data.check_md5=false", f"data.cifar_c_root={tmp_path / 'c10c'}")
    assert sorted(splits.ood) == sorted(f"{c}/{s}" for c in ("fog", "gaussian_noise") for s in range(1, 6))  # replaces the built-in suite
    n = len(written["test_y"])
    fog3 = splits.ood["fog/3"]
    assert isinstance(fog3.array, np.memmap) and len(fog3) == n and fog3.classes == CIFAR10_NAMES
    for i in (0, n - 1):
        image, label = fog3[i]
        assert torch.equal(image, torch.from_numpy(arrays["fog"][2 * n + i]).permute(2, 0, 1)) and label == written["test_y"][i]
    # a class subset relabels CIFAR-C like the clean splits
    sub = splits_of("data=cifar10", f"data.root={tmp_path / 'c10'}", "data.check_md5=false", f"data.cifar_c_root={tmp_path / 'c10c'}",
                    "data.target_classes=[4,1]", "data.cifar_c_corruptions=[fog]", "data.cifar_c_severities=[5]")
    assert list(sub.ood) == ["fog/5"]
    labels = [sub.ood["fog/5"][i][1] for i in range(len(sub.ood["fog/5"]))]
    assert labels == [0 if y == 4 else 1 for y in written["test_y"] if y in (4, 1)]


def test_cifar_c_with_the_wrong_row_count_names_the_file(tmp_path):
    written = write_cifar10(tmp_path / "c10")
    write_cifar_c(tmp_path / "c10c", written["test_y"])
    np.save(tmp_path / "c10c" / "fog.npy", np.zeros((7, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ConfigError, match=r"fog\.npy: expected uint8 \[100, H, W, 3\]"):
        splits_of("data=cifar10", f"data.root={tmp_path / 'c10'}", "data.check_md5=false", f"data.cifar_c_root={tmp_path / 'c10c'}")


def test_cifar_and_cifar_c_run_through_the_runner_with_per_severity_ood(tmp_path):
    from wdiv.training.runner import run

    written = write_cifar10(tmp_path / "c10", n_train=30, n_test=10)
    write_cifar_c(tmp_path / "c10c", written["test_y"], corruptions=("fog",))
    cfg = cfg_of(*TINY, "data=cifar10", f"data.root={tmp_path / 'c10'}", "data.check_md5=false", f"data.cifar_c_root={tmp_path / 'c10c'}")
    info = run(cfg, tmp_path / "run")
    ood = json.loads((tmp_path / "run" / "run.json").read_text())["metrics"]["ood"]
    assert info["status"] == "complete" and sorted(ood) == [f"fog/{s}" for s in range(1, 6)]
    assert info["metrics"]["ood_acc"] == pytest.approx(sum(ood.values()) / 5)


def test_domains_train_on_one_and_score_every_other(tmp_path):
    write_domains(tmp_path / "dn")
    splits = splits_of("data=domainnet", f"data.root={tmp_path / 'dn'}", "data.train_domain=sketch", "data.test_fraction=0.25", "data.val_fraction=0.34")
    assert splits.name == "domainnet-sketch" and splits.classes == ["apple", "bus", "cat"]
    assert list(splits.ood) == ["clipart", "real"] and all(len(d) == 12 for d in splits.ood.values())
    paths = lambda ds: [ds.dataset.samples[i][0] for i in ds.indices] if hasattr(ds, "indices") else [p for p, _ in ds.samples]  # noqa: E731
    train, val, test = paths(splits.train), paths(splits.val), paths(splits.test)
    assert len(test) == 3 and len(val) == 3 and len(train) == 6  # per class: 1 test, 1 val, 2 train
    assert sorted(train + val + test) == sorted(str(p) for p in (tmp_path / "dn" / "sketch").rglob("*.png"))
    assert all("/sketch/" in p for p in train + val + test) and all("/real/" in p for p, _ in splits.ood["real"].samples)
    assert splits.run_info["domains"] == {"train": "sketch", "ood": ["clipart", "real"], "test": "stratified 0.25"}
    # decoded lazily, one image at a time, at its stored size; labels by class folder
    assert isinstance(splits.ood["real"], FolderImages) and not any(torch.is_tensor(v) for v in vars(splits.ood["real"]).values())
    image, label = splits.ood["real"][0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 20, 24) and label == 0
    assert splits.train.classes == splits.classes  # the synthetic generators read the names here


def test_domain_class_folders_are_matched_by_name(tmp_path):
    root = write_domains(tmp_path / "dn")
    (root / "clipart" / "apple").rename(root / "clipart" / "zzz_unknown")
    with pytest.raises(ConfigError, match=r"^data\.root: domain 'clipart'.*\['zzz_unknown'\]"):
        splits_of("data=domainnet", f"data.root={root}")
    (root / "clipart" / "zzz_unknown").rename(root / "clipart" / "apple")
    for img in (root / "real" / "bus").iterdir():  # a domain without a class is scored on the rest
        img.unlink()
    (root / "real" / "bus").rmdir()
    splits = splits_of("data=domainnet", f"data.root={root}", "data.train_domain=sketch")
    assert sorted({label for _, label in splits.ood["real"].samples}) == [0, 2]  # apple, cat keep their labels


def test_domainnet_split_lists_are_used_when_present(tmp_path):
    root = write_domains(tmp_path / "dn", split_lists=True)
    splits = splits_of("data=domainnet", f"data.root={root}", "data.train_domain=real")
    assert sorted(p for p, _ in splits.test.samples) == sorted(str(root / "real" / c / "real_0.png") for c in ("apple", "bus", "cat"))
    assert len(splits.train) + len(splits.val) == 9 and splits.run_info["domains"]["test"] == "real_test.txt"
    assert [len(d) for d in splits.ood.values()] == [3, 3]  # the other domains' test lists
    assert splits_of("data=domainnet", f"data.root={root}", "data.split_files=false").run_info["domains"]["test"] == "stratified 0.2"


def test_office_home_is_the_same_reader_and_image_size_decodes_to_a_square(tmp_path):
    root = write_domains(tmp_path / "oh", domains=("Art", "Clipart", "Product", "Real_World"))
    splits = splits_of("data=office_home", f"data.root={root}", "data.image_size=16")
    assert splits.name == "office_home-Real_World" and list(splits.ood) == ["Art", "Clipart", "Product"]
    assert splits.image_size == 16 and tuple(splits.ood["Art"][5][0].shape) == (3, 16, 16)
    capped = splits_of("data=office_home", f"data.root={root}", "data.max_side=12")
    assert max(capped.ood["Art"][3][0].shape[-2:]) == 12  # 32 x 24 stored, longer side capped


def test_built_in_corruptions_of_folder_images_need_one_decoded_size(tmp_path):
    root = write_domains(tmp_path / "dn")
    corrupt = "+data.corruptions.contrast=0.3"
    with pytest.raises(ConfigError, match=r"^data\.corruptions: the built-in suite needs test images of one size"):
        splits_of("data=domainnet", f"data.root={root}", corrupt)
    splits = splits_of("data=domainnet", f"data.root={root}", corrupt, "data.image_size=16")
    assert list(splits.ood) == ["clipart", "sketch", "contrast"] and splits.ood["contrast"].images.shape[1:] == (3, 16, 16)
    assert splits.ood["contrast"].classes == ["apple", "bus", "cat"]


def test_stanford_cars_from_torchvision_layout_and_from_folders(tmp_path):
    write_stanford_cars(tmp_path / "cars")
    splits = splits_of("data=stanford_cars", f"data.root={tmp_path / 'cars'}", "data.val_fraction=0.34")
    assert splits.classes == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TT RS Coupe 2012"]
    assert len(splits.test) == 9 and len(splits.train) == 6 and len(splits.val) == 3
    image, label = splits.test[8]
    assert tuple(image.shape) == (3, 30, 40) and label == 2
    write_domains(tmp_path / "kaggle", domains=("train", "test"), classes=("Audi", "BMW"))
    folders = splits_of("data=stanford_cars", f"data.root={tmp_path / 'kaggle'}")
    assert folders.classes == ["Audi", "BMW"] and len(folders.test) == 8 and not folders.ood


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data=domainnet", "data.root=/nonexistent/dn"], "data.root"),
        (["data=domainnet", "data.train_domain=painting"], "data.train_domain"),
        (["data=office_home", "data.root=/nonexistent/oh"], "data.root"),
        (["data=stanford_cars", "data.root=/nonexistent/cars"], "data.root"),
        (["data=cifar10", "data.cifar_c_root=/nonexistent/c"], "data.cifar_c_root"),
        (["aug.at=input"], "aug.at"),
    ],
)
def test_bad_data_config_is_refused_naming_the_key(overrides, key, tmp_path):
    from wdiv.training.runner import run

    write_domains(tmp_path / "dn")
    write_cifar10(tmp_path / "c10")
    defaults = {"data=domainnet": [f"data.root={tmp_path / 'dn'}"], "data=cifar10": [f"data.root={tmp_path / 'c10'}", "data.check_md5=false"]}
    extra = [o for first in overrides[:1] for o in defaults.get(first, [])]
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": "):
        run(cfg_of(*TINY, *extra, *overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written
