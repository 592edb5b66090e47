"""The training loop's throughput design, checked on CPU: one DataLoader per run (workers kept
across epochs), no host read of a device value per step, and randomness that depends on
(seed, epoch, sample) only, so worker count and resume never change the weights."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset
from torch.utils._python_dispatch import TorchDispatchMode

from wdiv.training import loop
from wdiv.training.loop import Progress, Runtime, Schedule, fit, train_epoch


class NoisyDigits(Dataset):
    """Fixed images whose items are augmented with the global torch RNG (like torchvision v2)."""

    def __init__(self, n: int = 48):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 1, 6, 6, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        flip = torch.rand(()) < 0.5
        x = self.x[i].flip(-1) if flip else self.x[i]
        return x + 0.1 * torch.randn_like(x), int(self.y[i])


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3))


def _train(workers: int, epochs: int = 3, *, stop_at: int | None = None):
    """Weights after ``epochs``; with ``stop_at`` the run is cut there and resumed by a fresh fit."""
    rt = Runtime(device=torch.device("cpu"), num_workers=workers, progress=False)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data, val = NoisyDigits(), NoisyDigits(12)
    if stop_at is None:
        fit(model, opt, data, val, Schedule(epochs=epochs, batch_size=8), rt, seed=5)
        return model.state_dict()
    kept = []
    with pytest.raises(loop.StopRequested):  # the runner's kill stand-in: checkpoint, then stop
        fit(model, opt, data, val, Schedule(epochs=epochs, batch_size=8, stop_after_epoch=stop_at), rt, seed=5, on_epoch_end=kept.append)
    progress = kept[-1]
    saved = ({k: v.clone() for k, v in model.state_dict().items()}, opt.state_dict())
    model2 = _model()
    model2.load_state_dict(saved[0])
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(saved[1])
    fit(model2, opt2, data, val, Schedule(epochs=epochs, batch_size=8), rt, seed=5, progress=Progress(progress.epoch, progress.step, progress.history))
    return model2.state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_the_same_weights_with_or_without_workers_and_across_a_resume():
    reference = _train(0)
    assert _same(reference, _train(0))
    assert _same(reference, _train(2))  # augmentation seeded per sample, not per worker
    assert _same(reference, _train(0, stop_at=1))
    other = _train(0)
    assert _same(reference, other)


def test_different_epochs_draw_different_augmentations():
    """The per-sample seed follows the epoch: epoch 2 does not repeat epoch 1's draws."""
    sampler = loop.EpochSampler(10, seed=3)
    data = loop.SeededItems(NoisyDigits(10))
    sampler.set_epoch(0)
    first = {i: data[(s, i)][0] for s, i in sampler}
    sampler.set_epoch(1)
    second = {i: data[(s, i)][0] for s, i in sampler}
    assert not all(torch.equal(first[i], second[i]) for i in range(10))
    sampler.set_epoch(0)
    assert all(torch.equal(first[i], data[(s, i)][0]) for s, i in sampler)  # and epoch 0 again is epoch 0


def test_seeded_items_leave_the_callers_rng_stream_alone():
    torch.manual_seed(9)
    expected = torch.rand(3)
    torch.manual_seed(9)
    loop.SeededItems(NoisyDigits(4))[(123, 2)]
    assert torch.equal(torch.rand(3), expected)


def test_loaders_and_their_workers_are_built_once_per_run(monkeypatch):
    from torch.utils.data import dataloader

    built, started = [], []
    real_loader, real_iter = loop.DataLoader, dataloader._MultiProcessingDataLoaderIter.__init__

    class CountingLoader(real_loader):
        def __init__(self, *a, **k):
            built.append(1)
            super().__init__(*a, **k)

    def counting_iter(self, *a, **k):
        started.append(1)
        real_iter(self, *a, **k)

    monkeypatch.setattr(loop, "DataLoader", CountingLoader)
    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "__init__", counting_iter)
    rt = Runtime(device=torch.device("cpu"), num_workers=2, progress=False)
    model = _model()
    fit(model, torch.optim.SGD(model.parameters(), lr=0.1), NoisyDigits(), NoisyDigits(12), Schedule(epochs=4, batch_size=8), rt, seed=0)
    assert len(built) == 2  # training + validation, for all 4 epochs
    assert len(started) == 2  # one set of worker processes each, kept across epochs


class HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (.item(), int(), float(), bool() of a tensor)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _host_reads_of_an_epoch(n_batches: int) -> int:
    rt = Runtime(device=torch.device("cpu"), progress=False)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # SGD reads nothing back (Adam reads its step counter)
    batches = [(torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))) for _ in range(n_batches)]
    with HostReads() as reads:
        stats, step = train_epoch(model, batches, opt, rt, lr_at=lambda s: 1.0, step=0)
    assert step == n_batches and stats["train_acc"] <= 1.0
    return reads.count


def test_no_host_read_per_step():
    """Loss and accuracy are summed on the device: a longer epoch reads no more values back."""
    assert _host_reads_of_an_epoch(8) == _host_reads_of_an_epoch(2) <= 2


def test_epoch_stats_match_a_host_side_count():
    rt = Runtime(device=torch.device("cpu"), progress=False)
    model = _model()
    model.eval()  # no dropout: the recount sees the same logits
    batches = [(torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))) for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    model.train = lambda mode=True: model  # keep eval mode inside train_epoch
    stats, _ = train_epoch(model, batches, opt, rt, lr_at=lambda s: 1.0, step=0)
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(x), y).double() * len(y) for x, y in batches]
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    assert stats["train_loss"] == float(sum(losses)) / 24
    assert stats["train_acc"] == correct / 24


def test_compile_keeps_the_original_modules_state_dict_keys():
    model = _model()
    net = loop.compile_model(model, True, backend="eager")
    assert net is not model and list(dict(net.named_parameters())) != list(dict(model.named_parameters()))
    rt = Runtime(device=torch.device("cpu"), progress=False)
    fit(net, torch.optim.SGD(model.parameters(), lr=0.1), NoisyDigits(16), None, Schedule(epochs=1, batch_size=8), rt, seed=0)
    assert list(model.state_dict()) == ["1.weight", "1.bias", "4.weight", "4.bias"]
    assert loop.compile_model(model, False) is model


@pytest.mark.parametrize("conv_layers, expected", [(1, False), (3, True)])
def test_channels_last_only_for_cnns_on_cuda_unless_forced(conv_layers, expected):
    from omegaconf import OmegaConf

    from wdiv.training.runner import use_channels_last

    model = torch.nn.Sequential(*[torch.nn.Conv2d(3, 3, 3) for _ in range(conv_layers)])
    auto = OmegaConf.create({"channels_last": "auto"})
    assert use_channels_last(auto, model, Runtime(device=torch.device("cuda"))) is expected
    assert use_channels_last(auto, model, Runtime(device=torch.device("cpu"))) is False
    assert use_channels_last(OmegaConf.create({"channels_last": True}), model, Runtime(device=torch.device("cpu"))) is True
    rt = Runtime(device=torch.device("cpu"), channels_last=True)
    assert rt.layout(torch.zeros(2, 3, 4, 4)).is_contiguous(memory_format=torch.channels_last)


def test_a_run_with_dataloader_workers_trains_the_same_weights_as_without(tmp_path):
    """The runner end to end, augmentation on: 2 worker processes or none, bitwise the same."""
    from hydra import compose, initialize_config_dir
    from safetensors.torch import load_file

    from wdiv.train import CONFIG_DIR
    from wdiv.training.runner import run

    base = ["+exp=augment", "level=autoaugment+noise", "model=vit_micro", "trainer.epochs=2", "trainer.progress=false", "diversity.compute=false"]
    weights = []
    for workers in (0, 2):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[*base, f"trainer.num_workers={workers}"])
        info = run(cfg, tmp_path / f"w{workers}")
        assert info["status"] == "complete"
        weights.append(load_file(str(tmp_path / f"w{workers}" / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
