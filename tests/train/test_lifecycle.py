"""A training run's life cycle: divergence, early stopping across resumes, Ctrl-C/SIGTERM, unreadable
checkpoints, the history's epoch numbers. Tiny runs (a few epochs of a small network)."""

import json
import os
import signal

import ase.io
import numpy as np
import pytest
import torch

import fastfeat.train.trainer as trainer
from fastfeat.cli import main as cli
from fastfeat.train.config import TrainConfig
from fastfeat.train.evaluate import OnnxForceModel
from fastfeat.train.trainer import (CheckpointError, TrainingDiverged, TrainingInterrupted, load_checkpoint,
                                    train_model)

from ._helpers import quiet, random_train_val, small_spec
from ._synthetic import synthetic_frames


@pytest.fixture(scope="module")
def data():
    return random_train_val(24, 6)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lifecycle")
    ase.io.write(d / "syn.extxyz", synthetic_frames(20, seed=0))
    (d / "spec.json").write_text(small_spec().to_json())
    (d / "tiny.toml").write_text("hidden = [8]\nbatch_size = 8\nthreads = 1\n")
    return d


def _args(workdir, out, *extra):
    return ["train", "--data", str(workdir / "syn.extxyz"), "--spec", str(workdir / "spec.json"), "--config",
            str(workdir / "tiny.toml"), "--quiet", "--cache-dir", str(workdir / "cache"), "--out", str(out), *extra]


@pytest.fixture
def default_handlers():
    """Python's default SIGINT handler and SIGTERM's default action, as in a plain `fastfeat train`; restored."""
    old_int, old_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGINT, old_int)
    signal.signal(signal.SIGTERM, old_term)


def _signal_at(monkeypatch, calls, signum=signal.SIGINT):
    """Send ``signum`` to this process at the given (1-based) calls of the trainer's atom_rows (one per batch
    and one per validation: a 24-structure set in batches of 8 makes 4 calls an epoch)."""
    real = trainer.atom_rows
    count = [0]

    def atom_rows(offsets, idx):
        count[0] += 1
        if count[0] in calls:
            if signum == signal.SIGTERM:  # never kill the test run itself: the training handler must be there
                assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            os.kill(os.getpid(), signum)
        return real(offsets, idx)

    monkeypatch.setattr(trainer, "atom_rows", atom_rows)


def _nan_grads_from_epoch(monkeypatch, epoch, batches_per_epoch):
    """Gradients turn NaN from 1-based ``epoch`` on (through the grad_clip call of every step)."""
    real = torch.nn.utils.clip_grad_norm_
    count = [0]

    def clip(params, max_norm, *a, **k):
        params = list(params)
        count[0] += 1
        if count[0] > (epoch - 1) * batches_per_epoch:
            for p in params:
                p.grad.fill_(float("nan"))
        return real(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)


# ------------------------------------------------------------------ 1. divergence
def test_diverged_epoch_stops_the_run_and_keeps_the_checkpoint(data, tmp_path, monkeypatch):
    """NaN from epoch 3 on: TrainingDiverged (a ValueError) naming the epoch and `--lr`, no model; the
    checkpoint keeps epochs 1-2, and a resume with a smaller lr goes on from there."""
    spec, tr, va = data
    ck = str(tmp_path / "ck.pt")
    cfg = TrainConfig(epochs=5, batch_size=8, hidden=[8], threads=1, patience=0, grad_clip=10.0)
    with monkeypatch.context() as m:
        _nan_grads_from_epoch(m, 3, batches_per_epoch=3)
        with pytest.raises(TrainingDiverged) as info:
            train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck)
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and info.value.epoch == 3
    assert "training diverged in epoch 3" in msg and "smaller `--lr`" in msg, msg
    assert "keeps the run up to epoch 2" in msg and "`--resume`" in msg and ck in msg, msg
    saved = load_checkpoint(ck)
    assert saved["epoch"] == 1 and [h["epoch"] for h in saved["history"]] == [1, 2]
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    res = train_model(tr, va, spec, cfg.replace(lr=1e-3), log=quiet, checkpoint=ck, resume=True)
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(h["val_rmse"]) for h in res.history)


def test_diverged_first_epoch_exports_nothing(workdir, tmp_path, capsys):
    """`--lr 1e8`: NaN in epoch 1; the untrained initial weights used to be exported with exit 0."""
    out = tmp_path / "n.onnx"
    rc = cli(_args(workdir, out, "--lr", "1e8", "--epochs", "4", "--history", str(tmp_path / "h.json")))
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "training diverged in epoch 1" in err and "smaller `--lr`" in err and "no epoch validated" in err, err
    assert f"{str(out)!r} was not written" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "h.json").exists()


# ------------------------------------------------------------------ 2. early stopping across resumes
def test_resume_of_an_early_stopped_run_trains_no_further(data, tmp_path):
    spec, tr, va = data
    ck = str(tmp_path / "ck.pt")
    cfg = TrainConfig(epochs=50, batch_size=8, hidden=[8], lr=1e-9, patience=2, threads=1, schedule="constant")
    first = train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck)
    assert first.stopped == "early stopping" and len(first.history) == 3
    saved = load_checkpoint(ck)
    assert saved["stopped"] == "early stopping" and saved["bad_epochs"] == 2
    for _ in range(2):  # as often as it is resumed: no further epoch, the same model
        lines = []
        again = train_model(tr, va, spec, cfg, log=lines.append, checkpoint=ck, resume=True)
        assert again.stopped == "early stopping" and len(again.history) == 3, lines
        assert any("stopped early after epoch 3" in line and "no further epoch" in line for line in lines), lines
        for (k, x), y in zip(first.model.state_dict().items(), again.model.state_dict().values()):
            assert torch.equal(x, y), k
    assert load_checkpoint(ck)["epoch"] == 2
    # more epochs alone do not undo the early stop; a larger patience does, counting on from 2 epochs
    assert len(train_model(tr, va, spec, cfg.replace(epochs=60), log=quiet, checkpoint=ck,
                           resume=True).history) == 3
    lines = []
    more = train_model(tr, va, spec, cfg.replace(patience=3), log=lines.append, checkpoint=ck, resume=True)
    assert len(more.history) == 4 and more.stopped == "early stopping"
    assert any("early stopping: no improvement for 3 epochs" in line for line in lines), lines


# ------------------------------------------------------------------ 3. Ctrl-C and SIGTERM
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_stops_at_the_end_of_the_epoch(data, tmp_path, monkeypatch, default_handlers, signum):
    """A signal in epoch 2 ends the run after epoch 2, like the time limit: checkpointed, best model returned,
    resumable exactly; the handlers are restored."""
    spec, tr, va = data
    cfg = TrainConfig(epochs=4, batch_size=8, hidden=[8], threads=1, patience=0)
    full = train_model(tr, va, spec, cfg, log=quiet)
    ck = str(tmp_path / "ck.pt")
    (tmp_path / "ck.pt.tmp").write_bytes(b"")  # left by a killed write: removed
    with monkeypatch.context() as m:
        _signal_at(m, {6}, signum)
        try:
            res = train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck)
        except KeyboardInterrupt:  # would end the test session
            pytest.fail("the first signal interrupted the epoch")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert res.stopped == "interrupted" and res.signal == signum and len(res.history) == 2
    assert not (tmp_path / "ck.pt.tmp").exists()
    saved = load_checkpoint(ck)
    assert saved["epoch"] == 1 and saved["stopped"] == "interrupted"
    resumed = train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck, resume=True)
    assert resumed.stopped == "epochs" and resumed.signal is None
    np.testing.assert_allclose([h["val_rmse"] for h in resumed.history], [h["val_rmse"] for h in full.history],
                               rtol=1e-6)


def test_second_sigint_stops_at_once(data, tmp_path, monkeypatch, default_handlers):
    spec, tr, va = data
    cfg = TrainConfig(epochs=4, batch_size=8, hidden=[8], threads=1, patience=0)
    ck = str(tmp_path / "ck.pt")
    with monkeypatch.context() as m:
        _signal_at(m, {6, 7})
        with pytest.raises(TrainingInterrupted) as info:
            train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.status == 130
    msg = str(info.value)
    assert "during epoch 2" in msg and ck in msg and "holds epochs 1-1" in msg and "`--resume`" in msg, msg
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert load_checkpoint(ck)["epoch"] == 0 and not os.path.exists(f"{ck}.tmp")


def test_signals_handled_elsewhere_are_left_alone(data, monkeypatch):
    """Only Python's default SIGINT handler (and SIGTERM's default action) is replaced during training."""
    spec, tr, va = data
    seen = []

    def mine(signum, frame):
        seen.append(signum)

    old_int, old_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, mine)
    signal.signal(signal.SIGTERM, mine)
    try:
        with monkeypatch.context() as m:
            _signal_at(m, {2}, signal.SIGINT)
            res = train_model(tr, va, spec, TrainConfig(epochs=2, batch_size=8, hidden=[8], threads=1),
                              log=quiet)
        assert seen == [signal.SIGINT] and res.stopped == "epochs" and res.signal is None
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def test_interrupted_checkpoint_write_leaves_no_tmp(data, tmp_path, monkeypatch):
    """A write killed half-way: the previous checkpoint stays whole, no CHECKPOINT.tmp is left."""
    spec, tr, va = data
    ck = str(tmp_path / "ck.pt")
    cfg = TrainConfig(epochs=3, batch_size=8, hidden=[8], threads=1, patience=0)
    real = torch.save
    count = [0]

    def save(obj, path, *a, **k):
        count[0] += 1
        if count[0] == 2:
            with open(path, "wb") as fh:
                fh.write(b"PK\x03")
            raise KeyboardInterrupt
        return real(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(TrainingInterrupted, match="holds epochs 1-1"):
        train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck)
    assert not os.path.exists(f"{ck}.tmp") and load_checkpoint(ck)["epoch"] == 0


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_first_signal_exports_the_best_epoch(workdir, tmp_path, monkeypatch, capsys, default_handlers, signum,
                                                 status):
    """The first Ctrl-C/SIGTERM: the run stops after the epoch, exports its best model over the previous run's
    file, writes the history, says so in one line and exits 130 (SIGINT) / 143 (SIGTERM)."""
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an earlier run's model")
    hist = tmp_path / "h.json"
    _signal_at(monkeypatch, {5}, signum)  # 18 training structures, batches of 8: 3 batches + validation an epoch
    rc = cli(_args(workdir, out, "--epochs", "5", "--history", str(hist)))
    err = capsys.readouterr().err
    assert rc == status, err
    summary = json.loads(hist.read_text())
    assert summary["stopped"] == "interrupted" and summary["epochs_run"] == 2
    best = summary["best_epoch"]
    assert json.loads(OnnxForceModel(out).metadata["fastfeat.validation"])["best_epoch"] == best
    last = err.strip().splitlines()[-1]
    name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
    assert last.startswith(f"fastfeat train: interrupted ({name}) after epoch 2: the best epoch's model "
                           f"(epoch {best}) was exported"), last
    assert "`--resume` continues the run" in last and f"{out}.ckpt" in last and "Traceback" not in err
    # --resume goes on to epoch 5
    monkeypatch.undo()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert cli(_args(workdir, out, "--epochs", "5", "--history", str(hist), "--resume")) == 0
    assert [h["epoch"] for h in json.loads(hist.read_text())["history"]] == [1, 2, 3, 4, 5]


def test_cli_second_sigint_is_one_line(workdir, tmp_path, monkeypatch, capsys, default_handlers):
    out = tmp_path / "m.onnx"
    _signal_at(monkeypatch, {5, 6})  # both in epoch 2
    rc = cli(_args(workdir, out, "--epochs", "5"))
    err = capsys.readouterr().err
    assert rc == 130, err
    lines = [line for line in err.splitlines() if line.startswith("fastfeat train")]
    assert lines == [
        f"fastfeat train: interrupted (SIGINT) during epoch 2: the checkpoint {str(out) + '.ckpt'!r} holds epochs "
        f"1-1; `--resume` continues the run (and exports its best epoch's model); {str(out)!r} was not written"], err
    assert err.strip().splitlines()[-1] == lines[0] and "Traceback" not in err
    assert not out.exists() and not os.path.exists(f"{out}.ckpt.tmp")


# ------------------------------------------------------------------ 4. unreadable checkpoints
def _no_work(*args, **kwargs):
    raise AssertionError("the features were computed before the checkpoint was read")


def test_unreadable_checkpoint_is_one_error_before_the_features(data, workdir, tmp_path, monkeypatch, capsys):
    import fastfeat.train.cli as train_cli

    spec, tr, va = data
    good = tmp_path / "good.ckpt"
    train_model(tr, va, spec, TrainConfig(epochs=1, hidden=[8], threads=1), log=quiet, checkpoint=str(good))
    raw = good.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x08\x12\x07pytorch" + bytes(range(256)))
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    monkeypatch.setattr(train_cli, "prepare_features", _no_work)
    for name in ("truncated.ckpt", "empty.ckpt", "model.onnx", "other.pt"):
        path = str(tmp_path / name)
        rc = cli(_args(workdir, tmp_path / "m.onnx", "--epochs", "2", "--resume", "--checkpoint", path))
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        assert err.startswith(f"fastfeat train: error: checkpoint {path!r} is not a readable fastfeat checkpoint "
                              "(truncated or another file?): "), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(CheckpointError, match="it lacks model, optimizer"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_holds_plain_data_only(data, tmp_path):
    """Readable with weights_only=True (no pickled code), for every schedule and with weight averaging."""
    spec, tr, va = data
    for schedule, ema in (("cosine", 0.0), ("plateau", 0.9), ("constant", 0.0)):
        ck = tmp_path / f"{schedule}.ckpt"
        train_model(tr, va, spec, TrainConfig(epochs=1, hidden=[8], threads=1, schedule=schedule, ema_decay=ema),
                    log=quiet, checkpoint=str(ck))
        assert torch.load(ck, weights_only=True)["format"] == 2


# ------------------------------------------------------------------ 5. history epochs
def test_history_epochs_count_from_one(data, tmp_path):
    """Records are numbered as the progress lines, the summary's and the model's `best_epoch`; a checkpoint of
    the earlier format (records from 0) is renumbered on resume."""
    spec, tr, va = data
    cfg = TrainConfig(epochs=3, batch_size=8, hidden=[8], threads=1, patience=0)
    ck = str(tmp_path / "ck.pt")
    res = train_model(tr, va, spec, cfg.replace(epochs=2), log=quiet, checkpoint=ck)
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert res.history[res.best_epoch]["epoch"] == res.best_epoch + 1
    old = torch.load(ck, weights_only=True)
    del old["format"], old["stopped"]
    old["history"] = [{**h, "epoch": h["epoch"] - 1} for h in old["history"]]
    torch.save(old, ck)
    res = train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck, resume=True)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
