from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from archgen.data import Dataset, SealedTest, Split, load_dataset
from archgen.errors import UserError
from archgen.losses import mse_softmax
from archgen.training import (
    EpochMetrics,
    TrainConfig,
    Trainer,
    TrainResult,
    evaluate_test,
    seed_everything,
    train,
)

FAST = TrainConfig(epochs=3, batch_size=64, threads=1, patience=10)


@pytest.fixture(scope="module")
def digits_raw() -> Dataset:
    return load_dataset("digits")


@pytest.fixture
def digits(digits_raw) -> Dataset:
    """A fresh Dataset (its own sealed test) over the same tensors, per test."""
    test = digits_raw.test._SealedTest__split  # test-only access to re-seal a fresh copy
    return dataclasses.replace(digits_raw, test=SealedTest(test))


def mlp(seed: int = 0, hidden: int = 32, bn: bool = False) -> nn.Module:
    seed_everything(seed)
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(64, hidden)]
    if bn:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 10)]
    return nn.Sequential(*layers)


def strip_time(history: list[EpochMetrics]) -> list[tuple]:
    return [dataclasses.astuple(dataclasses.replace(m, duration_s=0.0)) for m in history]


def mean_abs_weight(model: nn.Module) -> float:
    ws = [p.detach().abs().flatten() for p in model.parameters() if p.dim() >= 2]
    return float(torch.cat(ws).mean())


# ---------------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("lr", 0.0, "lr=0.0"),
        ("lr", float("nan"), "lr=nan"),
        ("optimizer", "rmsprop", "optimizer='rmsprop'.*sgd, adam, adamw"),
        ("loss", "hinge", "loss='hinge'"),
        ("batch_size", 0, "batch_size=0"),
        ("epochs", 2.5, "epochs=2.5"),
        ("patience", 0, "patience=0"),
        ("weight_decay", -1.0, "weight_decay=-1.0"),
        ("l1", -0.1, "l1=-0.1"),
        ("momentum", 1.0, "momentum=1.0"),
        ("monitor", "val_f1", "monitor='val_f1'"),
        ("threads", 0, "threads=0"),
        ("device", "tpu", "device='tpu'"),
    ],
)
def test_config_rejects_bad_values_naming_them(field, value, match):
    with pytest.raises(UserError, match=match):
        TrainConfig(**{field: value})


# ---------------------------------------------------------------------------------------------
# losses


def test_mse_loss_is_softmax_vs_one_hot_summed_over_classes():
    logits = torch.zeros(2, 10)
    y = torch.tensor([3, 7])
    # Uniform probabilities 0.1: (0.9)^2 + 9 * (0.1)^2 = 0.9 for every sample.
    assert float(mse_softmax(logits, y)) == pytest.approx(0.9)
    confident = torch.full((1, 4), -100.0)
    confident[0, 2] = 100.0
    assert float(mse_softmax(confident, torch.tensor([2]))) == pytest.approx(0.0, abs=1e-9)
    assert float(mse_softmax(confident, torch.tensor([0]))) == pytest.approx(2.0)


def test_ce_and_mse_train_differently_and_both_learn(digits):
    results = {}
    for loss in ("ce", "mse"):
        model = mlp()
        r = train(model, digits, dataclasses.replace(FAST, loss=loss, epochs=4))
        results[loss] = r
        assert r.status == "ok" and r.best_val_acc > 0.7  # chance is 0.1
    # The mse history reports the mse value (bounded by 2), ce reports cross-entropy.
    assert results["ce"].history[0].train_loss != pytest.approx(results["mse"].history[0].train_loss, rel=0.05)
    assert results["mse"].history[0].train_loss < 2.0
    assert results["ce"].history[-1].val_loss != results["mse"].history[-1].val_loss


# ---------------------------------------------------------------------------------------------
# regularization


def test_l1_drives_weights_toward_zero(digits):
    def near_zero(model: nn.Module) -> float:
        ws = torch.cat([p.detach().flatten() for p in model.parameters() if p.dim() >= 2])
        return float(ws.abs().lt(2e-3).float().mean())

    plain, sparse = mlp(), mlp()
    cfg = dataclasses.replace(FAST, epochs=5, optimizer="sgd", lr=0.1)
    r_plain = train(plain, digits, cfg)
    r_sparse = train(sparse, digits, dataclasses.replace(cfg, l1=1e-2))
    assert mean_abs_weight(sparse) < 0.6 * mean_abs_weight(plain)
    assert near_zero(sparse) > 2 * near_zero(plain)
    # Reported losses are data losses, without the penalty: both stay in the same range.
    assert r_sparse.history[-1].train_loss < 3 * r_plain.history[-1].train_loss + 0.5


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_weight_decay_shrinks_weights_but_not_biases(digits, optimizer):
    def weight_norm(model):
        return float(sum(p.detach().pow(2).sum() for p in model.parameters() if p.dim() >= 2).sqrt())

    lr = 0.05 if optimizer == "sgd" else 1e-2
    wd = 0.05 if optimizer != "adamw" else 0.5
    plain, decayed = mlp(), mlp()
    cfg = dataclasses.replace(FAST, epochs=3, optimizer=optimizer, lr=lr)
    train(plain, digits, cfg)
    t = Trainer(decayed, digits, dataclasses.replace(cfg, weight_decay=wd))
    assert [g["weight_decay"] for g in t.optimizer.param_groups] == [wd, 0.0]
    assert all(p.dim() < 2 for p in t.optimizer.param_groups[1]["params"])
    t.run_epochs(3)
    assert weight_norm(decayed) < 0.9 * weight_norm(plain)


# ---------------------------------------------------------------------------------------------
# determinism and incremental training


def test_same_seed_gives_identical_metrics_and_weights(digits):
    cfg = dataclasses.replace(FAST, seed=7)
    a, b = mlp(seed=7), mlp(seed=7)
    ra, rb = train(a, digits, cfg), train(b, digits, cfg)
    assert strip_time(ra.history) == strip_time(rb.history)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    c = mlp(seed=7)
    rc = train(c, digits, dataclasses.replace(cfg, seed=8))  # same init, other shuffle/dropout
    assert strip_time(rc.history) != strip_time(ra.history)


def test_result_does_not_depend_on_global_rng_use_in_between(digits):
    a, b = mlp(), mlp()
    ta, tb = Trainer(a, digits, FAST), Trainer(b, digits, FAST)
    ha = ta.run_epochs(1)
    torch.rand(1000)  # unrelated draws from the global RNG
    hb = tb.run_epochs(1)
    assert strip_time(ha) == strip_time(hb)


def test_run_epochs_in_rounds_equals_one_run_and_state_dict_resumes_exactly(digits):
    full = Trainer(mlp(), digits, FAST)
    full_hist = full.run_epochs(4)
    rounds = Trainer(mlp(), digits, FAST)
    rounds.run_epochs(2)
    saved = rounds.state_dict()
    rounds.run_epochs(2)
    assert strip_time(rounds.history) == strip_time(full_hist)
    resumed = Trainer(mlp(seed=99), digits, FAST)  # other weights: the state replaces them
    resumed.load_state_dict(saved)
    assert resumed.epoch == 2
    assert strip_time(resumed.run_epochs(2)) == strip_time(full_hist[2:])
    # state_dict is a copy: training on does not change it.
    assert saved["epoch"] == 2


def test_set_hparams_changes_lr_and_is_validated(digits):
    t = Trainer(mlp(), digits, FAST)
    t.set_hparams(lr=0.01, weight_decay=0.1, l1=1e-4)
    assert all(g["lr"] == 0.01 for g in t.optimizer.param_groups)
    assert t.optimizer.param_groups[0]["weight_decay"] == 0.1 and t.l1 == 1e-4
    assert t.run_epochs(1)[0].lr == 0.01
    assert t.state_dict()["hparams"] == {"lr": 0.01, "weight_decay": 0.1, "l1": 1e-4}
    with pytest.raises(UserError, match="lr=-1"):
        t.set_hparams(lr=-1)


def test_one_sample_tail_batch_with_batchnorm_does_not_crash(digits):
    assert len(digits.train) % 4 == 1  # 1,257 training images
    r = train(mlp(bn=True), digits, dataclasses.replace(FAST, epochs=1, batch_size=4))
    assert r.status == "ok" and r.epochs_run == 1


# ---------------------------------------------------------------------------------------------
# early stopping


def noisy_dataset(n: int = 300, seed: int = 0) -> Dataset:
    """Random images with random labels: nothing generalizes, so a wide network overfits at once."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    k = n // 3
    return Dataset(
        name="noise", input_shape=(1, 8, 8), num_classes=10,
        train=Split(x[:k], y[:k]), val=Split(x[k : 2 * k], y[k : 2 * k]),
        test=SealedTest(Split(x[2 * k :], y[2 * k :])), class_names=[str(i) for i in range(10)],
    )


def test_early_stopping_stops_patience_epochs_after_best_and_restores_it():
    data = noisy_dataset()
    model = mlp(hidden=256)
    snapshots: dict[int, dict] = {}

    def remember(m: EpochMetrics) -> None:
        snapshots[m.epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    cfg = TrainConfig(epochs=50, patience=3, lr=3e-3, batch_size=16, threads=1)
    r = train(model, data, cfg, on_epoch=remember)
    assert isinstance(r, TrainResult) and r.status == "ok" and r.early_stopped
    losses = [m.val_loss for m in r.history]
    assert r.best_epoch == 1 + int(np.argmin(losses)) and r.best_val_loss == min(losses)
    assert r.epochs_run == r.best_epoch + cfg.patience < cfg.epochs
    assert r.history[-1].train_acc > r.history[r.best_epoch - 1].train_acc  # it did overfit
    restored = model.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in snapshots[r.best_epoch].items())
    loss, acc = Trainer(model, data, cfg).evaluate(data.val)
    assert loss == pytest.approx(r.best_val_loss, rel=1e-6) and acc == r.best_val_acc


def test_min_delta_and_val_acc_monitor():
    data = noisy_dataset()
    cfg = TrainConfig(epochs=30, patience=2, lr=3e-3, batch_size=16, threads=1, min_delta=10.0)
    r = train(mlp(hidden=256), data, cfg)
    # No change can beat the first epoch by 10: it stays best and training stops after 1 + 2.
    assert (r.best_epoch, r.epochs_run) == (1, 3)
    r = train(mlp(hidden=256), data, dataclasses.replace(cfg, min_delta=0.0, monitor="val_acc"))
    accs = [m.val_acc for m in r.history]
    assert r.best_val_acc == max(accs) and r.best_epoch == 1 + accs.index(max(accs))


def test_callback_can_stop_training(digits):
    seen = []
    r = train(mlp(), digits, dataclasses.replace(FAST, epochs=10), on_epoch=lambda m: seen.append(m.epoch) or m.epoch == 2)
    assert r.status == "stopped" and r.epochs_run == 2 and seen == [1, 2]
    assert r.reason == "stopped by callback after epoch 2"


def test_deadline_stops_training_within_an_epoch_and_restores_the_best_epoch(digits, monkeypatch):
    import time as real_time
    import types

    import archgen.trainer as train_mod

    calls = []  # the trainer reads the wall clock once per batch; the budget runs out at call 51

    def clock() -> float:
        calls.append(1)
        return 0.0 if len(calls) <= 50 else 10.0

    monkeypatch.setattr(train_mod, "time", types.SimpleNamespace(time=clock, perf_counter=real_time.perf_counter))
    per_epoch = math.ceil(len(digits.train) / FAST.batch_size)
    assert per_epoch == 20  # 1,257 training images in batches of 64
    model = mlp()
    r = train(model, digits, dataclasses.replace(FAST, epochs=10), deadline=5.0)
    assert r.status == "stopped" and r.epochs_run == 2
    assert r.reason == "time budget reached in epoch 3 before batch 11"
    assert r.best_epoch in (1, 2) and len(calls) == 51
    # the half-trained epoch 3 is gone: the model holds exactly the weights after its best epoch
    reference = mlp()
    Trainer(reference, digits, FAST).run_epochs(r.best_epoch)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    # no deadline: the clock is never read per batch
    calls.clear()
    r = train(mlp(), digits, dataclasses.replace(FAST, epochs=1))
    assert r.status == "ok" and calls == []


def test_deadline_before_the_first_batch_finishes_no_epoch(digits):
    import time

    r = train(mlp(), digits, FAST, deadline=time.time() - 1)
    assert r.status == "stopped" and r.epochs_run == 0 and r.history == []
    assert r.reason == "time budget reached in epoch 1 before batch 1"


def test_train_fixed_runs_exactly_n_epochs_and_keeps_the_last_weights(digits):
    from archgen.training import train_fixed

    model = mlp()
    r = train_fixed(model, digits, dataclasses.replace(FAST, patience=1), 4)
    assert r.status == "ok" and r.epochs_run == 4 and r.best_epoch == 4 and not r.early_stopped
    # the weights after epoch 4, whatever the validation loss did (patience 1 would have stopped
    # train() earlier or restored an earlier epoch)
    again = mlp()
    history = Trainer(again, digits, FAST).run_epochs(4)
    assert strip_time(r.history) == strip_time(history)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


# ---------------------------------------------------------------------------------------------
# divergence


def test_far_too_large_lr_fails_cleanly_as_diverged(digits):
    model = mlp()
    r = train(model, digits, dataclasses.replace(FAST, optimizer="sgd", lr=1e4, epochs=5))
    assert r.status == "diverged"
    assert r.reason.startswith("diverged: loss ") and "epoch 1 batch 2" in r.reason
    assert (r.best_epoch, r.best_val_acc, r.epochs_run) == (0, 0.0, 0) and math.isinf(r.best_val_loss)
    assert digits.test.opened == 0


def test_nan_loss_is_reported_as_diverged(digits):
    class Poisoned(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = mlp()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            out = self.inner(x)
            return out * float("nan") if self.calls == 5 else out

    r = train(Poisoned(), digits, FAST)
    assert r.status == "diverged" and r.reason == "diverged: loss became nan at epoch 1 batch 5"


def test_divergence_after_good_epochs_restores_the_best_weights(digits):
    class Switchable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = mlp()
            self.poison = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            return out * float("inf") if self.poison and self.training else out

    model = Switchable()
    snapshots: dict[int, dict] = {}

    def on_epoch(m: EpochMetrics) -> None:
        snapshots[m.epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        model.poison = m.epoch == 2

    r = train(model, digits, dataclasses.replace(FAST, epochs=5), on_epoch=on_epoch)
    assert r.status == "diverged" and "at epoch 3 batch 1" in r.reason
    assert r.epochs_run == 2 and r.best_epoch == 2 and r.best_val_acc == r.history[1].val_acc
    assert all(torch.equal(model.state_dict()[k], v) for k, v in snapshots[2].items())


def test_trainer_divergence_is_sticky_until_a_state_is_loaded(digits):
    t = Trainer(mlp(), digits, FAST)
    t.run_epochs(1)
    saved = t.state_dict()
    t.set_hparams(lr=1e6)
    assert t.run_epochs(3) == [] and t.diverged and t.reason.startswith("diverged")
    assert t.run_epochs(1) == [] and len(t.history) == 1
    t.load_state_dict(saved)
    assert not t.diverged and t.lr == FAST.lr and len(t.run_epochs(1)) == 1


# ---------------------------------------------------------------------------------------------
# the sealed test split


class SpyTest(SealedTest):
    def __init__(self, split: Split) -> None:
        super().__init__(split)
        self.allowed = False

    def open(self, reason: str) -> Split:
        assert self.allowed, f"test split opened during selection: {reason}"
        return super().open(reason)


def test_test_split_is_never_read_during_training_and_read_once_at_the_end(digits):
    spy_test = SpyTest(digits.test._SealedTest__split)
    data = dataclasses.replace(digits, test=spy_test)
    model = mlp()
    r = train(model, data, dataclasses.replace(FAST, epochs=3), on_epoch=lambda m: None)
    assert r.status == "ok" and spy_test.opened == 0
    spy_test.allowed = True
    out = evaluate_test(model, data, reason="final evaluation")
    assert spy_test.opened == 1 and out["test_opened"] == 1 and out["n"] == 270
    # The figure is the model's accuracy on exactly those images.
    split = spy_test._SealedTest__split
    with torch.no_grad():
        model.eval()
        manual = float((model(split.x).argmax(1) == split.y).float().mean())
    assert out["test_acc"] == pytest.approx(manual)
    with pytest.raises(RuntimeError, match="already opened"):
        evaluate_test(model, data, reason="peek again")
    assert spy_test.opened == 1


# ---------------------------------------------------------------------------------------------
# progress bar


def test_progress_bar_only_on_a_terminal_and_when_asked(monkeypatch):
    import io
    import sys

    from archgen.trainer import _progress

    items = [0, 64, 128]
    assert _progress(items, True, "x") is items  # pytest's stderr is not a TTY
    fake_tty = io.StringIO()
    fake_tty.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stderr", fake_tty)
    assert _progress(items, False, "x") is items
    bar = _progress(items, True, "epoch 1/3")
    assert list(bar) == items
    bar.close()
    assert "epoch 1/3" in fake_tty.getvalue()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_and_test_evaluation_on_cuda(digits):
    model = mlp()
    r = train(model, digits, dataclasses.replace(FAST, device="cuda", epochs=2))
    assert r.status == "ok" and r.epochs_run == 2 and r.best_val_acc > 0.5
    assert next(model.parameters()).is_cuda
    out = evaluate_test(model, digits, reason="cuda check")
    assert out["n"] == 270 and 0.5 < out["test_acc"] <= 1.0


def test_cuda_device_without_cuda_is_a_user_error(digits, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        Trainer(mlp(), digits, dataclasses.replace(FAST, device="cuda"))


def test_random_shift_moves_pixels_within_bounds_and_is_seeded():
    import torch

    from archgen.augment import random_shift

    x = torch.arange(1, 2 * 1 * 5 * 5 + 1, dtype=torch.float).reshape(2, 1, 5, 5)
    torch.manual_seed(3)
    a = random_shift(x, 1)
    torch.manual_seed(3)
    b = random_shift(x, 1)
    assert torch.equal(a, b) and a.shape == x.shape
    for i in range(2):
        # every output pixel is either padding (0) or an input pixel of the same image
        vals = set(a[i].flatten().tolist()) - {0.0}
        assert vals <= set(x[i].flatten().tolist())
        # a shift of at most 1 keeps the centre 3x3 block inside the output
        assert set(x[i, 0, 1:4, 1:4].flatten().tolist()) <= vals
    assert torch.equal(random_shift(x, 0), x)


# ---------------------------------------------------------------------------------------------
# memory layout


def small_cnn(seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 10))


def test_cpu_training_runs_channels_last_and_hands_back_the_default_layout(digits):
    model = small_cnn()
    trainer = Trainer(model, digits, FAST)
    assert trainer.channels_last
    conv = model[4].weight  # 8 -> 16 channels (with one input channel both layouts are one)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    trainer.run_epochs(1)
    assert trainer.release() is model
    assert all(p.is_contiguous() for p in model.parameters())
    trainer.run_epochs(1)  # training goes on in channels-last after a release
    assert not model[4].weight.is_contiguous()
    result = train(small_cnn(), digits, FAST)
    assert result.status == "ok" and result.epochs_run == FAST.epochs


def test_train_hands_back_a_contiguous_model_trained_as_contiguous_training_would(digits):
    fast, plain = small_cnn(), small_cnn()
    r_fast = train(fast, digits, FAST)
    r_plain = train(plain, digits, dataclasses.replace(FAST, memory_format="contiguous"))
    assert all(p.is_contiguous() for p in fast.parameters())
    # The same arithmetic in another order: the same training to float rounding.
    assert len(r_fast.history) == len(r_plain.history) == FAST.epochs
    for a, b in zip(r_fast.history, r_plain.history):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-3)
        assert a.val_acc == pytest.approx(b.val_acc, abs=2 / len(digits.val))
    x = digits.val.x[:4]
    fast.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(fast(x), plain(x), rtol=0.01, atol=0.01)


def test_memory_format_choices():
    x4, x2 = torch.zeros(2, 1, 8, 8), torch.zeros(2, 64)
    from archgen.trainer import uses_channels_last

    assert uses_channels_last(FAST, x4)
    assert not uses_channels_last(FAST, x2)  # no image batches: nothing to lay out
    assert not uses_channels_last(dataclasses.replace(FAST, memory_format="contiguous"), x4)
    assert not uses_channels_last(dataclasses.replace(FAST, device="cuda"), x4)  # auto: CPU only
    assert uses_channels_last(dataclasses.replace(FAST, device="cuda", memory_format="channels_last"), x4)
    with pytest.raises(UserError, match="memory_format='nhwc' is invalid: choose one of auto"):
        dataclasses.replace(FAST, memory_format="nhwc")


def test_colour_batches_reach_the_model_channels_last_without_copying_the_training_set():
    """With 3 channels the layouts differ: every training and validation batch goes in
    channels-last, the training split is not duplicated, and training after ``release`` still
    moves the weights."""
    seed_everything(0)
    n = 96
    x = torch.randn(n, 3, 8, 8)
    y = torch.arange(n) % 4
    data = Dataset("rgb", (3, 8, 8), 4, Split(x[:64], y[:64]), Split(x[64:], y[64:]), SealedTest(Split(x[:0], y[:0])),
                   [str(i) for i in range(4)])
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 4))
    seen: list[tuple[bool, bool]] = []
    model[0].register_forward_pre_hook(
        lambda mod, inp: seen.append((mod.training, inp[0].is_contiguous(memory_format=torch.channels_last)
                                      and not inp[0].is_contiguous())))
    trainer = Trainer(model, data, dataclasses.replace(FAST, batch_size=16))
    assert trainer._train_x.data_ptr() == data.train.x.data_ptr()  # no second copy
    trainer.run_epochs(1)
    assert [train for train, _ in seen].count(True) == 4 and seen[-1][0] is False  # 4 batches, then validation
    assert all(last for _, last in seen)
    before = [p.detach().clone() for p in trainer.release().parameters()]
    trainer.run_epochs(1)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
