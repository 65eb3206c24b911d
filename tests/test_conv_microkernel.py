"""fastconv's own float32 products, in C, against naive loops, compiled here with the
compiler that builds the extensions: the AVX-512 micro-kernel and layout routines of the
im2col convolution (tests/c/test_conv_microkernel.c) and the AVX2 register tile of the
im2col and Winograd convolutions (tests/c/test_gemm_avx2.c). Each compiles on every x86-64
machine and runs only where the CPU has its instruction set (elsewhere the float32
products run on BLAS, which the conv tests cover)."""
import os
import platform
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {"avx512": "test_conv_microkernel.c", "avx2": "test_gemm_avx2.c"}
INCLUDE = os.path.join(ROOT, "src_pyx", "include")


def _compiler():
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="the micro-kernel is x86-64 only")
@pytest.mark.parametrize("isa", sorted(SOURCES))
def test_microkernel_matches_naive_loops(isa, tmp_path):
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler on PATH")
    exe = tmp_path / isa
    build = subprocess.run([cc, "-O2", "-std=c99", "-Wall", "-Werror", "-I", INCLUDE,
                            os.path.join(ROOT, "tests", "c", SOURCES[isa]), "-o", str(exe),
                            "-lm"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    if run.returncode == 77:
        pytest.skip(f"this CPU has no {isa.upper()} (compiled, not run)")
    assert run.returncode == 0, run.stdout + run.stderr
