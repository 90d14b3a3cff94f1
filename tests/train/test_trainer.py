"""Training loop on random features: learning, determinism, checkpoint/resume, early stopping; config."""

import numpy as np
import pytest
import torch

from fastfeat.train.config import TrainConfig, load_config
from fastfeat.train.trainer import predict, train_model

from ._helpers import quiet, random_features, random_train_val


@pytest.fixture(scope="module")
def data():
    return random_train_val(60, 10)


def test_training_reduces_validation_error(data):
    spec, tr, va = data
    cfg = TrainConfig(head="basis", hidden=[32, 32], epochs=25, batch_size=4, threads=1, patience=0)
    res = train_model(tr, va, spec, cfg, log=quiet)
    first, best = res.history[0]["val_rmse"], res.best_val
    ref_rms = float(np.sqrt((va.target**2).mean()))
    assert best < 0.3 * ref_rms, f"best val RMSE {best:.3f}, reference RMS {ref_rms:.3f}"
    assert best < first
    assert res.model.training is False
    np.testing.assert_allclose(np.sqrt(((predict(res.model, va) - va.target) ** 2).mean()), best, rtol=1e-4)


def test_same_seed_same_model(data):
    spec, tr, va = data
    cfg = TrainConfig(epochs=3, batch_size=8, hidden=[8], threads=1)
    a = train_model(tr, va, spec, cfg, log=quiet)
    b = train_model(tr, va, spec, cfg, log=quiet)
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k
    c = train_model(tr, va, spec, cfg.replace(seed=1), log=quiet)
    assert not torch.equal(a.model.nets[0][0].weight, c.model.nets[0][0].weight)


@pytest.mark.parametrize("schedule, ema", [("cosine", 0.0), ("plateau", 0.0), ("cosine", 0.9)])
def test_resume_continues_exactly(data, tmp_path, schedule, ema):
    spec, tr, va = data
    cfg = TrainConfig(epochs=6, batch_size=8, hidden=[8], threads=1, schedule=schedule, patience=0, ema_decay=ema)
    full = train_model(tr, va, spec, cfg, log=quiet, checkpoint=str(tmp_path / "full.pt"))
    ck = str(tmp_path / "part.pt")
    train_model(tr, va, spec, cfg.replace(epochs=6, time_limit=1e-9), log=quiet, checkpoint=ck)  # stops after 1 epoch
    assert torch.load(ck, weights_only=False)["epoch"] == 0
    resumed = train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck, resume=True)
    assert [h["epoch"] for h in resumed.history] == list(range(1, 7))
    np.testing.assert_allclose([h["val_rmse"] for h in resumed.history], [h["val_rmse"] for h in full.history],
                               rtol=1e-6)
    for (k, x), y in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=k)


def test_weight_average(data, tmp_path):
    """ema_decay -> the validated, kept weights are the running average: with a decay of ~0 they are the
    last weights, with ~1 still the initial ones; the best epoch's validation RMSE is that of the result."""
    spec, tr, va = data
    cfg = TrainConfig(head="basis", hidden=[16], epochs=4, batch_size=4, threads=1, patience=0, schedule="constant")
    plain = train_model(tr, va, spec, cfg, log=quiet)
    tiny = train_model(tr, va, spec, cfg.replace(ema_decay=1e-9), log=quiet)
    for (k, x), y in zip(plain.model.state_dict().items(), tiny.model.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=k)
    frozen = train_model(tr, va, spec, cfg.replace(ema_decay=1 - 1e-9, epochs=1), log=quiet)
    init = train_model(tr, va, spec, cfg.replace(lr=1e-12, epochs=1), log=quiet)
    for (k, x), y in zip(init.model.state_dict().items(), frozen.model.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=k)
    avg = train_model(tr, va, spec, cfg.replace(ema_decay=0.9), log=quiet)
    assert not torch.equal(avg.model.nets[0][0].weight, plain.model.nets[0][0].weight)
    rmse = np.sqrt(((predict(avg.model, va) - va.target) ** 2).mean())
    np.testing.assert_allclose(rmse, avg.best_val, rtol=1e-4)
    # the kept (averaged) model is the epoch of the lowest validation error
    assert avg.best_val == min(h["val_rmse"] for h in avg.history)
    assert avg.history[avg.best_epoch]["val_rmse"] == avg.best_val
    ck = str(tmp_path / "plain.pt")
    train_model(tr, va, spec, cfg.replace(epochs=1), log=quiet, checkpoint=ck)
    with pytest.raises(ValueError, match="without `ema_decay`"):
        train_model(tr, va, spec, cfg.replace(ema_decay=0.9), log=quiet, checkpoint=ck, resume=True)


def test_resume_refuses_other_model_or_data(data, tmp_path):
    spec, tr, va = data
    ck = str(tmp_path / "ck.pt")
    cfg = TrainConfig(epochs=1, hidden=[8], threads=1)
    train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck, data_sha="a" * 64)
    with pytest.raises(ValueError, match="different model"):
        train_model(tr, va, spec, cfg.replace(hidden=[9]), log=quiet, checkpoint=ck, resume=True)
    with pytest.raises(ValueError, match="other data"):
        train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck, resume=True, data_sha="b" * 64)
    with pytest.raises(FileNotFoundError, match="--resume"):
        train_model(tr, va, spec, cfg, log=quiet, checkpoint=str(tmp_path / "none.pt"), resume=True)


def test_resume_mismatch_names_the_differing_keys(data, tmp_path):
    """A different model is refused with each differing setting and both values, not two spec dumps."""
    import fastfeat

    spec, tr, va = data
    ck = str(tmp_path / "ck.pt")
    cfg = TrainConfig(epochs=1, hidden=[8], threads=1)
    train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck)
    with pytest.raises(ValueError) as info:
        train_model(tr, va, spec, cfg.replace(head="basis", hidden=[9]), log=quiet, checkpoint=ck, resume=True)
    msg = str(info.value)
    assert "head: 'projection' in the checkpoint, 'basis' now" in msg
    assert "hidden: [8] in the checkpoint, [9] now" in msg
    assert "radial" not in msg and len(msg) < 400, msg  # no spec JSON dumps
    other = fastfeat.FeatureSpec.from_dict({**spec.to_dict(), "cutoff": 4.5})
    with pytest.raises(ValueError, match=r"spec\.cutoff: 4\.0 in the checkpoint, 4\.5 now") as info:
        train_model(tr, va, other, cfg, log=quiet, checkpoint=ck, resume=True)
    assert len(str(info.value)) < 400


def _cosine(lr, ratio, epochs, e):
    eta = lr * ratio
    return eta + (lr - eta) * (1 + np.cos(np.pi * e / epochs)) / 2


def test_resume_with_more_epochs_replans_the_schedule(data, tmp_path):
    """2 epochs, then resume with epochs=4: the cosine schedule is the one of a 4-epoch run from epoch 3 on
    (it used to keep T_max=2: lr ~min at epoch 3, then back up); a new `lr` on resume is used."""
    spec, tr, va = data
    cfg = TrainConfig(epochs=2, batch_size=8, hidden=[8], threads=1, patience=0, lr=3e-3)
    ck = str(tmp_path / "ck.pt")
    train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck)
    saved = tmp_path / "saved.pt"
    saved.write_bytes((tmp_path / "ck.pt").read_bytes())
    lines = []
    mid = tmp_path / "mid.pt"

    def log(line):  # when epoch 4 is reported, ck.pt still holds the state after epoch 3: keep it
        lines.append(line)
        if line.startswith("epoch    4/4"):
            mid.write_bytes((tmp_path / "ck.pt").read_bytes())

    res = train_model(tr, va, spec, cfg.replace(epochs=4), log=log, checkpoint=ck, resume=True)
    lrs = [h["lr"] for h in res.history]
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]
    np.testing.assert_allclose(lrs, [_cosine(3e-3, 0.01, 2, 0), _cosine(3e-3, 0.01, 2, 1),
                                     _cosine(3e-3, 0.01, 4, 2), _cosine(3e-3, 0.01, 4, 3)], rtol=1e-9)
    fresh = train_model(tr, va, spec, cfg.replace(epochs=4), log=quiet)
    np.testing.assert_allclose(lrs[2:], [h["lr"] for h in fresh.history][2:], rtol=1e-9)
    assert any("re-planned" in line and "epochs=4 (was 2)" in line for line in lines), lines
    # a re-planned run stopped after epoch 3 and resumed with its own settings goes on along the same curve
    (tmp_path / "ck.pt").write_bytes(mid.read_bytes())
    again = train_model(tr, va, spec, cfg.replace(epochs=4), log=quiet, checkpoint=ck, resume=True)
    np.testing.assert_allclose([h["lr"] for h in again.history], lrs, rtol=1e-9)
    # a new learning rate on resume is used (it was silently ignored)
    (tmp_path / "ck.pt").write_bytes(saved.read_bytes())
    res = train_model(tr, va, spec, cfg.replace(epochs=4, lr=1e-5), log=quiet, checkpoint=ck, resume=True)
    np.testing.assert_allclose([h["lr"] for h in res.history][2:],
                               [_cosine(1e-5, 0.01, 4, 2), _cosine(1e-5, 0.01, 4, 3)], rtol=1e-9)
    # constant and plateau schedules restart at the new rate
    for schedule in ("constant", "plateau"):
        ck2 = str(tmp_path / f"{schedule}.pt")
        train_model(tr, va, spec, cfg.replace(schedule=schedule), log=quiet, checkpoint=ck2)
        res = train_model(tr, va, spec, cfg.replace(schedule=schedule, epochs=3, lr=1e-4), log=quiet,
                          checkpoint=ck2, resume=True)
        assert res.history[2]["lr"] == pytest.approx(1e-4, rel=1e-12), schedule
    # `epochs` is the total: fewer than already run is refused
    with pytest.raises(ValueError, match=r"`epochs` must be at least the 4 epochs already run.*got 3"):
        train_model(tr, va, spec, cfg.replace(epochs=3), log=quiet, checkpoint=ck, resume=True)


def test_resume_names_changed_training_settings(data, tmp_path):
    """A resume may change batch size, precision, weight decay, clipping or averaging: the later epochs use the
    new values (the loop reads them), and a note names each one (they used to change without a word)."""
    spec, tr, va = data
    cfg = TrainConfig(epochs=2, batch_size=8, hidden=[8], threads=1, patience=0, ema_decay=0.9)
    ck = str(tmp_path / "ck.pt")
    train_model(tr, va, spec, cfg, log=quiet, checkpoint=ck)
    saved = (tmp_path / "ck.pt").read_bytes()
    lines = []
    train_model(tr, va, spec, cfg.replace(epochs=3, batch_size=4, grad_clip=1.0, ema_decay=0.5), log=lines.append,
                checkpoint=ck, resume=True)
    note = [line for line in lines if line.startswith("note: the epochs from 3 train with changed settings")]
    assert len(note) == 1, lines
    for part in ("batch_size 4 (was 8)", "grad_clip 1.0 (was 0.0)", "ema_decay 0.5 (was 0.9)"):
        assert part in note[0], note
    assert "weight_decay" not in note[0] and "dtype" not in note[0]
    # unchanged settings: no note
    (tmp_path / "ck.pt").write_bytes(saved)
    lines = []
    train_model(tr, va, spec, cfg.replace(epochs=3), log=lines.append, checkpoint=ck, resume=True)
    assert not any("changed settings" in line for line in lines), lines


def test_early_stopping(data):
    spec, tr, va = data
    cfg = TrainConfig(epochs=200, batch_size=8, hidden=[8], lr=1e-9, patience=3, threads=1, schedule="constant")
    res = train_model(tr, va, spec, cfg, log=quiet)
    assert res.stopped == "early stopping"
    assert len(res.history) < 200


def test_progress_lines(data):
    spec, tr, va = data
    lines = []
    train_model(tr, va, spec, TrainConfig(epochs=2, hidden=[8], threads=1), log=lines.append)
    epochs = [l for l in lines if l.startswith("epoch")]
    assert len(epochs) == 2 and "loss" in epochs[0] and "val MAE" in epochs[0]


def test_empty_sets_are_refused(data):
    spec, tr, va = data
    with pytest.raises(ValueError, match="validation set is empty"):
        train_model(tr, va.subset([]), spec, TrainConfig(epochs=1), log=quiet)
    with pytest.raises(ValueError, match="training set is empty"):
        train_model(tr.subset([]), va, spec, TrainConfig(epochs=1), log=quiet)


def test_features_of_another_spec_are_refused():
    """Features made with one spec, trained with another (default vs dense preset): a clear error up front,
    not an index error deep in torch."""
    import fastfeat

    species = ("H", "O", "C")
    made, other = fastfeat.FeatureSpec.default(species), fastfeat.FeatureSpec.default(species, preset="dense")
    rng = np.random.default_rng(1)
    tr, va = random_features(made, 4, rng), random_features(made, 2, rng)
    cfg = TrainConfig(epochs=1, hidden=[4], threads=1)
    with pytest.raises(ValueError, match=r"training set: `covariant` must have shape \(N, n_covariant, 3\) = "
                                         r"\(\d+, 48, 3\) .*got \(\d+, 24, 3\); featurize with the model's"):
        train_model(tr, va, other, cfg, log=quiet)
    with pytest.raises(ValueError, match=r"training set: `invariant` must have shape \(N, n_invariant\) = "
                                         r"\(\d+, \d+\) .*; featurize with"):
        train_model(tr, va, fastfeat.FeatureSpec.default(species[:2]), cfg, log=quiet)
    with pytest.raises(ValueError, match=r"validation set: `covariant` .*= \(\d+, 24, 3\) .*got \(\d+, 48, 3\)"):
        train_model(tr, random_features(other, 2, rng), made, cfg, log=quiet)
    bad = va.subset(range(va.n_structures))
    bad.species[0] = 3
    with pytest.raises(ValueError, match=r"validation set: `species` holds 3 at atom 0, which is not an index into "
                                         r"the spec's species \['H', 'O', 'C'\] \(valid: 0 to 2\)"):
        train_model(tr, bad, made, cfg, log=quiet)


# ---------------------------------------------------------------------- config
def test_config_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('head = "basis"\nhidden = [32, 16]\nepochs = 7\nlr = 1e-3\nschedule = "plateau"\n'
                 '[spec]\ncutoff = 4.0\nangular_cutoff = 3.0\nradial = [[1.0, 1.0]]\nangular = []\n'
                 'covariant = [[1.0, 1.0]]\n')
    cfg = load_config(p, epochs=9)
    assert cfg.head == "basis" and cfg.hidden == [32, 16] and cfg.epochs == 9 and cfg.lr == 1e-3
    assert cfg.spec["cutoff"] == 4.0


def test_config_unknown_key_lists_valid_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("epocs = 3\n")
    with pytest.raises(ValueError, match=r"unknown config key `epocs`.*valid keys: head, hidden, .*epochs"):
        load_config(p)
    p.write_text("[spec]\ncutof = 3.0\n")
    with pytest.raises(ValueError, match=r"`spec.cutof`.*cutoff"):
        load_config(p)


@pytest.mark.parametrize("key,value,exc,match", [
    ("head", "energy", ValueError, "`head`"),
    ("epochs", 0, ValueError, "`epochs`"),
    ("epochs", 2.5, TypeError, "`epochs`"),
    ("lr", "fast", TypeError, "`lr`"),
    ("hidden", [0], ValueError, "`hidden`"),
    ("val_fraction", 1.0, ValueError, "`val_fraction`"),
    ("schedule", "step", ValueError, "`schedule`"),
    ("ema_decay", 1.0, ValueError, "`ema_decay`"),
])
def test_config_bad_values(key, value, exc, match):
    with pytest.raises(exc, match=match):
        TrainConfig(**{key: value})


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config"):
        load_config(tmp_path / "none.toml")
    p = tmp_path / "broken.toml"
    p.write_text("head = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(p)
