"""Build fastconv's Cython kernels: every src_pyx/<name>.pyx becomes fastconv._ext.<name>.

Environment variables
---------------------
FASTCONV_REQUIRE_OPENMP=1   fail the build when OpenMP does not work (CI sets it).
FASTCONV_NO_OPENMP=1        build without OpenMP (prange then runs serially).
FASTCONV_MARCH=native       add -march=<value>; opt-in, since wheels must stay portable.
FASTCONV_DEBUG_CYTHON=1     bounds and initialisation checks on, for hunting segfaults.
FASTCONV_ANNOTATE=1         write the cython -a HTML next to each .pyx.

The modules are cythonized and compiled in parallel (one job per core unless
``build_ext -j N`` says otherwise), with one line per module (``pip install -v .`` shows them).
Compiler flags follow the compiler (``compiler_flags``): gcc and clang get -O3 -fopenmp,
MSVC /O2 /openmp, Apple clang -Xpreprocessor -fopenmp -lomp with Homebrew's libomp. Only
Linux with gcc is tested.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

OPENMP_TEST_PROGRAM = textwrap.dedent("""
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d", n == omp_get_max_threads());
        return 0;
    }
""")


def _env_flag(name):
    return os.environ.get(name, "") not in ("", "0")


def _brew_prefix(formula):
    try:
        out = subprocess.run(["brew", "--prefix", formula], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    prefix = out.stdout.strip()
    return prefix if out.returncode == 0 and os.path.isdir(prefix) else None


def compiler_flags(compiler_type):
    """(optimisation flags, OpenMP compile flags, OpenMP link flags) for this compiler.

    gcc and clang: -O3 -fopenmp. MSVC: /O2 /openmp (its linker needs nothing more). macOS:
    Apple clang has no OpenMP runtime and no -fopenmp driver flag; with Homebrew's libomp
    (or LIBOMP_PREFIX=<its folder>) it is -Xpreprocessor -fopenmp plus -lomp.
    """
    if compiler_type == "msvc":
        return ["/O2"], ["/openmp"], []
    if sys.platform == "darwin":
        prefix = os.environ.get("LIBOMP_PREFIX") or _brew_prefix("libomp")
        include = [f"-I{prefix}/include"] if prefix else []
        libs = [f"-L{prefix}/lib", f"-Wl,-rpath,{prefix}/lib"] if prefix else []
        return ["-O3"], ["-Xpreprocessor", "-fopenmp"] + include, libs + ["-lomp"]
    return ["-O3"], ["-fopenmp"], ["-fopenmp"]


def openmp_works(compiler, compile_flags, link_flags):
    """Compile, link and run a tiny OpenMP program (scikit-learn's check), True if it prints 1."""
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "omp_check.c")
        with open(src, "w") as f:
            f.write(OPENMP_TEST_PROGRAM)
        objects = compiler.compile([src], output_dir=tmp, extra_postargs=compile_flags)
        exe = os.path.join(tmp, "omp_check" + (compiler.exe_extension or ""))
        compiler.link_executable(objects, "omp_check", output_dir=tmp, extra_postargs=link_flags)
        out = subprocess.run([exe], capture_output=True, text=True, timeout=60).stdout
        return out.strip() == "1"
    except Exception as exc:  # a compile, link or run failure all mean "no OpenMP"
        print(f"fastconv: OpenMP check failed: {exc}", file=sys.stderr)
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """build_ext that decides the OpenMP and optimisation flags once, from the real compiler,
    and compiles the modules in parallel."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:           # build_ext -j N wins; else one job per core
            self.parallel = os.cpu_count() or 1

    def build_extension(self, ext):
        start = time.perf_counter()
        print(f"fastconv: compiling {ext.name} ...", flush=True)
        super().build_extension(ext)
        print(f"fastconv: {ext.name} done ({time.perf_counter() - start:.0f} s)", flush=True)

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        optimise, openmp_compile, openmp_link = compiler_flags(ctype)
        compile_args = list(optimise)
        link_args = []
        march = os.environ.get("FASTCONV_MARCH", "")
        if march:
            compile_args.append(f"/arch:{march}" if ctype == "msvc" else f"-march={march}")
        use_openmp = False
        print(f"fastconv: building {len(self.extensions)} kernel modules with {ctype} "
              f"({self.parallel} at a time)", flush=True)
        if _env_flag("FASTCONV_NO_OPENMP"):
            print("fastconv: FASTCONV_NO_OPENMP is set, building serial kernels.", file=sys.stderr)
        elif openmp_works(self.compiler, openmp_compile, openmp_link):
            use_openmp = True
            compile_args += openmp_compile
            link_args += openmp_link
        elif _env_flag("FASTCONV_REQUIRE_OPENMP"):
            raise RuntimeError("fastconv: FASTCONV_REQUIRE_OPENMP=1 but the compiler cannot "
                               "build and run an OpenMP program (is libgomp installed?).")
        else:
            print("\n" + "*" * 72 + "\nWARNING fastconv: OpenMP not available; the kernels will "
                  "run on ONE thread.\nInstall an OpenMP-capable compiler (gcc with libgomp) "
                  "and rebuild.\n" + "*" * 72 + "\n", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = compile_args + list(ext.extra_compile_args or [])
            if ext.name in EXACT_ROUNDING and ctype != "msvc":   # MSVC never contracts
                ext.extra_compile_args.append("-ffp-contract=off")
            ext.extra_link_args = link_args + list(ext.extra_link_args or [])
        self._write_build_config(use_openmp, compile_args, link_args)
        super().build_extensions()

    def _write_build_config(self, use_openmp, compile_args, link_args):
        """Record how the kernels were built, for fastconv.info(): in the build tree and,
        for in-place and editable builds, in the source tree too."""
        text = ('"""Written by setup.py at build time; read by fastconv.info()."""\n'
                f"OPENMP = {use_openmp!r}\n"
                f"COMPILE_ARGS = {compile_args!r}\n"
                f"LINK_ARGS = {link_args!r}\n")
        for root in {self.build_lib, HERE}:
            folder = os.path.join(root, "fastconv")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "_build_config.py"), "w") as f:
                f.write(text)


# Modules whose plain C arithmetic must round after each operation, as their NumPy twin
# does: no multiply and add contracted into one fused multiply-add (FMA), which gcc and
# clang do by default where the instructions exist (the AVX2 / AVX-512 copies).
EXACT_ROUNDING = {"fastconv._ext.optim"}


def extensions():
    debug = _env_flag("FASTCONV_DEBUG_CYTHON")
    sources = sorted(glob.glob(os.path.join("src_pyx", "*.pyx")))
    exts = [Extension(f"fastconv._ext.{os.path.splitext(os.path.basename(src))[0]}", [src],
                      include_dirs=[numpy.get_include(), os.path.join("src_pyx", "include")],
                      define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
            for src in sources]
    # Cythonize in parallel where worker processes fork (Linux); elsewhere a process pool would
    # re-run this script in each worker.
    parallel = (os.cpu_count() or 1) if sys.platform.startswith("linux") else 0
    return cythonize(
        exts,
        nthreads=parallel,
        include_path=["src_pyx"],
        annotate=_env_flag("FASTCONV_ANNOTATE"),
        compiler_directives={
            "language_level": 3,
            "boundscheck": debug,
            "initializedcheck": debug,
            "wraparound": False,
            "cdivision": True,
            "nonecheck": False,
            "embedsignature": True,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
