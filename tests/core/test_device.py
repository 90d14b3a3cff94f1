"""fastfeat._device.cpu_description: the CPU facts that speed figures are reported with."""

from fastfeat._device import cpu_description

_PROCESSOR = """processor\t: {k}
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
cpu MHz\t\t: 2445.404
flags\t\t: fpu sse2 {flags}

"""


def _cpuinfo(tmp_path, flags, name="info"):
    path = tmp_path / name
    path.write_text("".join(_PROCESSOR.format(k=k, flags=flags) for k in range(2)))
    return str(path)


def test_cpu_description_names_family_clock_and_vector_width(tmp_path):
    text = cpu_description(_cpuinfo(tmp_path, "fma avx2"))
    assert text.startswith("AMD EPYC (family 25 model 1, 2445 MHz, AVX2"), text
    assert cpu_description(_cpuinfo(tmp_path, "fma avx2 avx512f avx512bw", "b")).startswith(
        "AMD EPYC (family 25 model 1, 2445 MHz, AVX-512")
    assert ", no AVX2" in cpu_description(_cpuinfo(tmp_path, "sse4_2", "c"))


def test_cpu_description_without_cpuinfo(tmp_path):
    text = cpu_description(str(tmp_path / "missing"))
    assert isinstance(text, str) and text
