"""The CPU kernels' own arithmetic: the polynomial exp (float64 and float32), the cosine cutoff from r^2
and the cell-list walks' floor division."""

import math

import numpy as np
from numba import njit

from fastfeat._kernels.features_cpu import _c, _cutoff_r2, _fexp
from fastfeat._kernels.neighbors_cpu import _floor_div, _wrap_index


@njit(cache=False)
def _fexp_all(x):
    out = np.empty_like(x)
    for k in range(x.shape[0]):
        out[k] = _fexp(x[k])
    return out


@njit(cache=False)
def _cutoff_all(r, rc):
    out = np.empty_like(r)
    w2 = (math.pi / rc) ** 2
    for k in range(r.shape[0]):
        out[k] = _cutoff_r2(r[k] * r[k], _c(w2, out))
    return out


def test_fexp_within_two_ulp_of_exp():
    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.random(100_000) * 708.0, -rng.random(10_000) * 1e-3, [0.0, -1e-300, -0.5 * math.log(2),
                        -708.0, -1.0, -2.0, -30.0]])
    ref = np.exp(x)
    got = _fexp_all(x)
    ulp = np.abs(got - ref) / np.spacing(ref)
    assert ulp.max() <= 2.0, f"x = {x[np.argmax(ulp)]!r}: {ulp.max():.1f} ulp"


def test_fexp_clamps_below_the_normal_range():
    # exp(-708) is the smallest argument kept; below it the kernels never need the value (a Gaussian
    # that small is zero against any other term), and a denormal would slow the arithmetic down
    got = _fexp_all(np.array([-709.0, -745.0, -1e6]))
    np.testing.assert_allclose(got, np.exp(-708.0), rtol=3e-16, atol=0)


def test_cosine_cutoff_from_r_squared():
    rc = 5.2
    r = np.linspace(1e-6, rc * (1 - 1e-12), 20_001)
    np.testing.assert_allclose(_cutoff_all(r, rc), 0.5 * (np.cos(np.pi * r / rc) + 1.0), rtol=0, atol=1e-15)


def test_fexp_float32_within_two_ulp_of_exp():
    # the angular terms of float32 features are computed in float32 (the exp of a float32 argument)
    rng = np.random.default_rng(1)
    x = np.concatenate([-rng.random(200_000) * 87.0, -rng.random(10_000) * 1e-3,
                        [0.0, -1e-30, -0.5 * math.log(2), -87.0, -86.9, -1.0, -2.0, -30.0]]).astype(np.float32)
    got = _fexp_all(x)
    assert got.dtype == np.float32
    ref = np.exp(x.astype(np.float64))  # the exact value of exp at the float32 argument
    ulp = np.abs(got.astype(np.float64) - ref) / np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert ulp.max() <= 2.0, f"x = {x[np.argmax(ulp)]!r}: {ulp.max():.2f} ulp"


def test_fexp_float32_clamps_below_the_normal_range():
    got = _fexp_all(np.array([-87.5, -100.0, -1e6], dtype=np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.exp(np.float64(-87.0)), rtol=1e-7, atol=0)
    assert (got >= np.finfo(np.float32).tiny).all()


def test_cosine_cutoff_from_r_squared_float32():
    rc = 3.5
    r = np.linspace(1e-3, rc * (1 - 1e-6), 20_001).astype(np.float32)
    got = _cutoff_all(r, np.float32(rc))
    assert got.dtype == np.float32
    r64 = r.astype(np.float64)
    np.testing.assert_allclose(got, 0.5 * (np.cos(np.pi * r64 / rc) + 1.0), rtol=0, atol=4e-7)


@njit(cache=False)
def _floor_div_all(b, n):
    out = np.empty((b.shape[0], 3), np.int64)
    for k in range(b.shape[0]):
        out[k, 0] = _floor_div(b[k], n)
        w, t, ok = _wrap_index(b[k], n, True)
        out[k, 1] = w
        out[k, 2] = t
    return out


def test_floor_division_fast_path_equals_floor_division():
    # the fast path covers -n <= b < 2n; far images (cutoffs of several cells) take the division
    for n in range(1, 9):
        b = np.arange(-5 * n - 3, 5 * n + 4, dtype=np.int64)
        out = _floor_div_all(b, n)
        np.testing.assert_array_equal(out[:, 0], b // n, err_msg=f"n={n}")
        np.testing.assert_array_equal(out[:, 1], b % n, err_msg=f"n={n}")
        np.testing.assert_array_equal(out[:, 1] + out[:, 2] * n, b, err_msg=f"n={n}")
