"""Every kernel file compiles with NVRTC for the target architectures, on a
machine without a GPU (the nvidia-cuda-nvrtc-cu12 wheel is enough)."""

from __future__ import annotations

import pytest

from gpubpe.backends.cuda import catalogue as K

nvrtc = pytest.importorskip("gpubpe.backends.cuda.nvrtc")

ARCHS = ["sm_80", "sm_90"]


@pytest.fixture(scope="module")
def lib():
    try:
        return nvrtc.library()
    except nvrtc.NvrtcUnavailable as e:
        pytest.skip(str(e))


def test_kernel_files_found():
    names = {f.name for f in K.kernel_files()}
    assert {"links.cu", "pair_table.cu", "step.cu", "compact.cu"} <= names


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", [f.name for f in K.kernel_files()])
def test_compiles_without_warnings(lib, name, arch):
    size, log = nvrtc.compile_cu(K.kernel_dir() / name, arch)
    assert size > 0
    assert "warning" not in log.lower(), log


def test_broken_source_reports_the_log(lib, tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('#include "common.cuh"\nextern "C" __global__ void k(int* x) { x[0] = undefined_name; }\n')
    with pytest.raises(RuntimeError, match="undefined_name"):
        nvrtc.compile_cu(bad, "sm_80")
