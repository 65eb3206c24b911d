# Sourced by .ci/sanitize and .ci/boundscheck: build fastconv's kernels in a copy of the tree,
# with its own virtual environment, so the main install is never touched, then run the kernel
# tests there. The caller sets the compiler flags (CC, LDSHARED, FASTCONV_DEBUG_CYTHON) first.
#   separate_build NAME   -> builds into $BUILD_ROOT (= ${TMPDIR:-/tmp}/fastconv-NAME)
#   KERNEL_TESTS          -> the kernel test files, run by the caller with its own checks

# The tests of the compiled kernels and of the op layer that feeds them.
KERNEL_TESTS=(tests/test_conv.py tests/test_pool.py tests/test_batchnorm.py
              tests/test_activation.py tests/test_linear.py tests/test_functional.py
              tests/test_reliability.py tests/test_fuzz.py tests/test_optim.py
              tests/test_loss.py tests/test_conv_winograd.py tests/test_fuse.py)

# A gcc with extra flags that compiles at -O1 where setup.py asks for -O3: the checks find the
# same errors, and the large generated C files build several times faster.
#   export CC="$(o1_gcc FLAGS...)" LDSHARED="$CC -shared"
o1_gcc() {
    local wrapper
    wrapper="$(mktemp -d)/gcc-o1"
    cat > "$wrapper" <<EOS
#!/usr/bin/env bash
args=(); for a in "\$@"; do [[ "\$a" == -O3 ]] && a=-O1; args+=("\$a"); done
exec gcc $* "\${args[@]}"
EOS
    chmod +x "$wrapper"
    echo "$wrapper"
}

separate_build() {
    local name=$1 src
    src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    BUILD_ROOT="${TMPDIR:-/tmp}/fastconv-$name"
    rm -rf "$BUILD_ROOT"
    mkdir -p "$BUILD_ROOT/src"
    # The sources only: no compiled modules, generated C or caches from the main build.
    (cd "$src" && tar cf - --exclude='*.so' --exclude='src_pyx/*.c' --exclude='__pycache__' \
        --exclude='_build_config.py' setup.py pyproject.toml README.md LICENSE MANIFEST.in \
        fastconv src_pyx tests) \
        | tar xf - -C "$BUILD_ROOT/src"
    python3 -m venv "$BUILD_ROOT/venv"
    # shellcheck disable=SC1091
    . "$BUILD_ROOT/venv/bin/activate"
    python -m pip install -q --upgrade pip
    python -m pip install -q "setuptools>=77" "Cython>=3.0" "numpy>=2.0" "scipy>=1.11" \
        "threadpoolctl>=3.1" "tqdm>=4.60" "pytest>=7" "hypothesis>=6"
    echo "CI $name: building the kernels in $BUILD_ROOT/src (CC=${CC:-default})"
    if ! (cd "$BUILD_ROOT/src" && FASTCONV_REQUIRE_OPENMP=1 \
            python setup.py -q build_ext --inplace -j 2) > "$BUILD_ROOT/build.log" 2>&1; then
        tail -n 40 "$BUILD_ROOT/build.log"
        echo "CI $name: the build failed (full log: $BUILD_ROOT/build.log)" >&2
        return 1
    fi
    # The tests import this copy, also from the child processes some of them start elsewhere.
    export PYTHONPATH="$BUILD_ROOT/src"
}
