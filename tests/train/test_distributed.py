"""`fastfeat train` under torchrun (2 CPU processes, gloo) equals a 1-process run with the same global batch."""

import json
import os
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch.distributed

from fastfeat.train.evaluate import OnnxForceModel

from ._helpers import random_features, small_spec
from ._synthetic import synthetic_frames

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_two_processes_equal_one(tmp_path, ema_decay):
    ase.io.write(tmp_path / "syn.extxyz", synthetic_frames(24, seed=7))
    (tmp_path / "spec.json").write_text(small_spec().to_json())
    (tmp_path / "cfg.toml").write_text(f"ema_decay = {ema_decay}\n")  # the averaged weights are the same on every rank
    common = ["train", "--data", str(tmp_path / "syn.extxyz"), "--spec", str(tmp_path / "spec.json"),
              "--config", str(tmp_path / "cfg.toml"),
              "--epochs", "3", "--batch-size", "5", "--dtype", "float64", "--export-dtype", "float64",
              "--threads", "1", "--cache-dir", str(tmp_path / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    one = subprocess.run([sys.executable, "-m", "fastfeat.cli", *common, "--out", str(tmp_path / "one.onnx"),
                          "--history", str(tmp_path / "one.json")], env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "fastfeat.cli", *common, "--out", str(tmp_path / "two.onnx"),
                          "--history", str(tmp_path / "two.json")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "world size 2" in two.stderr and "world size 1" in one.stderr
    h1 = json.loads((tmp_path / "one.json").read_text())["history"]
    h2 = json.loads((tmp_path / "two.json").read_text())["history"]
    assert len(h1) == len(h2) == 3
    for a, b in zip(h1, h2):
        for key in ("train_mse", "val_mae", "val_rmse"):
            assert a[key] == pytest.approx(b[key], rel=1e-9), (key, a, b)
    # the exported models agree
    fs = random_features(small_spec(), 6, np.random.default_rng(3))
    f1 = OnnxForceModel(tmp_path / "one.onnx")(fs.invariant, fs.covariant, fs.species)
    f2 = OnnxForceModel(tmp_path / "two.onnx")(fs.invariant, fs.covariant, fs.species)
    np.testing.assert_allclose(f2, f1, rtol=1e-9, atol=1e-12 * np.abs(f1).max())
    # and training did change the model (the comparison is not vacuous)
    assert h1[-1]["val_rmse"] < h1[0]["val_rmse"]
    # the config reached the trainer: the checkpoint holds averaged weights exactly when asked for
    ck = torch.load(tmp_path / "two.onnx.ckpt", weights_only=False)
    assert (ck["ema"] is not None) == (ema_decay > 0)
