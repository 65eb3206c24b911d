"""Running Python in a source checkout whose kernels were never compiled there (the repository
root after a plain `pip install .`) imports that folder: fastconv must say so and what to do,
not 'rebuild with pip install .', which would not help."""
import os
import shutil
import sys

import fastconv
from helpers import run_python

PACKAGE = os.path.dirname(os.path.abspath(fastconv.__file__))


def _source_checkout(root):
    """A copy of the package as in a fresh clone: setup.py, src_pyx/, no compiled modules."""
    shutil.copytree(PACKAGE, root / "fastconv", ignore=shutil.ignore_patterns(
        "*.so", "*.pyd", "_build_config.py", "__pycache__"))
    (root / "setup.py").write_text("# the build script\n")
    (root / "src_pyx").mkdir()
    return root


def test_info_and_fast_backend_explain_the_source_folder(tmp_path):
    root = _source_checkout(tmp_path)
    res = run_python(["-c", "import fastconv; fastconv.info()"], cwd=root)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[1].startswith("WARNING: this fastconv was imported from the source folder")
    assert str(root / "fastconv") in lines[1]
    assert "cd .." in lines[1] and "pip install -e ." in lines[1]
    res = run_python(["-c", "import numpy as np, fastconv.functional as F; "
                            "F.relu(np.ones(3, np.float32))"], cwd=root)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError") and "source folder" in last and "pip install -e ." in last
    assert "Rebuild it from the source folder with `pip install .`" not in last
    # the reference backend still works there
    res = run_python(["-c", "import numpy as np, fastconv.functional as F; "
                            "print(F.relu(np.ones(3), backend='reference').sum())"], cwd=root)
    assert res.returncode == 0 and res.stdout.strip() == "3.0", res.stderr


def test_no_warning_for_a_working_install(tmp_path):
    res = run_python(["-c", "import fastconv; r = fastconv.info(); print(r['source_folder_problem'])"],
                     cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip().splitlines()[-1] == "None", res.stdout
    assert "WARNING: this fastconv" not in res.stdout


def test_source_folder_names_the_installed_copy(tmp_path, monkeypatch):
    """When a compiled copy is on sys.path too, the message says where it is."""
    import fastconv._backend as backend
    root = _source_checkout(tmp_path)
    monkeypatch.setattr(backend, "__file__", str(root / "fastconv" / "_backend.py"))
    monkeypatch.setattr(sys, "path", [str(root), os.path.dirname(PACKAGE)])
    text = backend.source_folder_problem()
    assert text and str(root / "fastconv") in text and f"the installed one is {PACKAGE}" in text
