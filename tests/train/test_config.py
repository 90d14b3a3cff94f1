"""TrainConfig / load_config: Python 3.10 (tomli), no torch needed, the [spec] table, finite numbers."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from packaging.requirements import Requirement

from fastfeat.train.config import TrainConfig, load_config, tomllib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: the [spec] keys as the README documents them: a complete FeatureSpec, species optional
SPEC_REQUIRED = ("cutoff", "angular_cutoff", "radial", "angular", "covariant")
SPEC_OPTIONAL = ("covariant_angular", "species")
SPEC = {"cutoff": 4.0, "angular_cutoff": 3.0, "radial": [[1.0, 1.0]], "angular": [], "covariant": [[1.0, 1.0]]}


def test_config_reads_without_tomllib_and_without_torch(tmp_path):
    """Python 3.10 has no tomllib (tomli instead), and a base install has no torch: reading and checking a
    config must work with neither (the [train] extra check of `fastfeat train` comes after)."""
    p = tmp_path / "c.toml"
    p.write_text('head = "basis"\nepochs = 7\n[spec]\ncutoff = 4.0\nangular_cutoff = 3.0\n'
                 'radial = [[1.0, 1.0]]\nangular = []\ncovariant = [[1.0, 1.0]]\n')
    code = textwrap.dedent(f"""
        import json, sys
        try:
            import tomllib as real
        except ModuleNotFoundError:      # Python 3.10
            import tomli as real
        sys.modules["tomli"] = real      # the tomli package (or tomllib standing in for it)
        sys.modules["tomllib"] = None    # Python 3.10: import tomllib fails
        sys.modules["torch"] = None      # base install: import torch fails
        import fastfeat.train.config as config
        assert config.tomllib is real
        cfg = config.load_config({str(p)!r}, lr=1e-3)
        print(json.dumps(cfg.to_dict()))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["head"] == "basis" and cfg["epochs"] == 7 and cfg["lr"] == 1e-3 and cfg["spec"]["cutoff"] == 4.0


def test_train_extra_brings_tomli_on_python_3_10_only():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    assert project["requires-python"] == ">=3.10"
    train = {r.name: r for r in map(Requirement, project["optional-dependencies"]["train"])}
    assert {"torch", "onnx", "matplotlib", "tomli"} <= set(train)
    assert str(train["torch"].specifier).startswith(">=")  # a range, not a pin
    tomli = train["tomli"]
    assert tomli.marker.evaluate({"python_version": "3.10"})
    assert not tomli.marker.evaluate({"python_version": "3.11"})
    assert not tomli.marker.evaluate({"python_version": "3.12"})


# ------------------------------------------------------------------ [spec]
def test_complete_spec_table_is_accepted_species_optional():
    assert TrainConfig(spec=SPEC).spec == SPEC
    assert TrainConfig(spec={**SPEC, "species": ["H", "O"], "covariant_angular": [[0.1, 1.0, 1.0]]}).spec["species"]
    assert TrainConfig(spec={}).spec == {}  # no table: spec_preset


@pytest.mark.parametrize("spec,missing", [
    ({"cutoff": 6.0}, ["angular_cutoff", "radial", "angular", "covariant"]),
    ({k: v for k, v in SPEC.items() if k != "angular"}, ["angular"]),
])
def test_partial_spec_table_names_missing_fields(spec, missing):
    with pytest.raises(ValueError) as err:
        TrainConfig(spec=spec)
    msg = str(err.value)
    for key in missing:
        assert f"`spec.{key}`" in msg, msg
    for key in set(SPEC_REQUIRED) - set(missing):
        assert f"`spec.{key}`" not in msg, msg
    assert "complete FeatureSpec" in msg and "not merged" in msg and "spec_preset" in msg
    assert all(k in msg for k in SPEC_OPTIONAL)


def test_partial_spec_table_in_toml_fails_in_load_config(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[spec]\ncutoff = 6.0\n")
    with pytest.raises(ValueError, match=r"missing `spec.angular_cutoff`.*complete FeatureSpec"):
        load_config(p)


@pytest.mark.parametrize("change,match", [
    ({"angular_cutoff": 7.0}, "angular_cutoff"),
    ({"cutoff": -1.0}, "cutoff"),
    ({"covariant": []}, "covariant"),
    ({"radial": "wide"}, "radial"),
    ({"species": ["Xx"]}, "Xx"),
])
def test_bad_spec_values_are_refused_by_the_config(change, match):
    with pytest.raises((ValueError, TypeError), match=rf"config \[spec\]: .*{match}"):
        TrainConfig(spec={**SPEC, **change})


# ------------------------------------------------------------------ numbers
FLOAT_KEYS = ["input_clip", "eps_rel", "eps_abs", "lr", "weight_decay", "min_lr_ratio", "plateau_factor",
              "val_fraction", "time_limit", "grad_clip", "ema_decay"]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, pytest.param(10**400, id="int-1e400")])
def test_float_keys_must_be_finite(key, value):
    with pytest.raises(ValueError, match=rf"config `{key}` must be a finite number"):
        TrainConfig(**{key: value})


def test_float_keys_cover_every_float_field():
    floats = [k for k, v in TrainConfig().to_dict().items() if isinstance(v, float)]
    assert sorted(floats) == sorted(FLOAT_KEYS)


def test_infinite_eps_in_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("eps_rel = inf\n")
    with pytest.raises(ValueError, match="`eps_rel` must be a finite number, got inf"):
        load_config(p)


def test_eps_ranges():
    TrainConfig(eps_rel=0.0, eps_abs=1e-12)
    with pytest.raises(ValueError, match="`eps_rel`"):
        TrainConfig(eps_rel=-0.1)
    with pytest.raises(ValueError, match="`eps_abs`"):
        TrainConfig(eps_abs=0.0)


def test_forces_in_another_unit_are_refused():
    """Forces are learned in eV/Å, the runtime's unit; another target may carry any unit."""
    with pytest.raises(ValueError, match=r"config `target_unit` = 'kcal/mol/A': forces are learned in eV/Å"):
        TrainConfig(target_unit="kcal/mol/A")
    assert TrainConfig(target_unit="eV/A").target_unit == "eV/A"
    assert TrainConfig(target="dipole", target_unit="e Å").target_unit == "e Å"
