"""OpenMP's waiting policy: ``import fastconv`` leaves os.environ alone; the ``fastconv``
command and ``fastconv.tune_openmp_waiting()`` (called before any kernel) set it."""
import json
import os

import pytest

from helpers import run_python

_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in _VARS}
    env.update(extra)
    return env


def _run(code, env):
    out = run_python(["-c", code], env=env)
    assert out.returncode == 0, out.stderr
    return out


def test_import_leaves_the_environment_unchanged():
    code = ("import json, os; before = dict(os.environ); import fastconv, fastconv.nn, "
            "fastconv.models, fastconv.functional, fastconv.cli; "
            "print(json.dumps(dict(os.environ) == before))")
    assert json.loads(_run(code, _clean_env()).stdout) is True


def test_tune_openmp_waiting_before_any_kernel_sets_both_variables():
    code = ("import json, os, warnings, fastconv; warnings.simplefilter('error'); "
            "set_ = fastconv.tune_openmp_waiting(); "
            "print(json.dumps([set_, os.environ.get('GOMP_SPINCOUNT'), "
            "os.environ.get('KMP_BLOCKTIME')]))")
    assert json.loads(_run(code, _clean_env()).stdout) == [
        {"GOMP_SPINCOUNT": "2000", "KMP_BLOCKTIME": "0"}, "2000", "0"]


@pytest.mark.parametrize("extra,expected", [
    ({"OMP_WAIT_POLICY": "PASSIVE"}, [{}, None, None]),          # the user chose: nothing set
    ({"GOMP_SPINCOUNT": "10"}, [{"KMP_BLOCKTIME": "0"}, "10", "0"]),   # the user's value wins
])
def test_tune_openmp_waiting_respects_the_users_choice(extra, expected):
    code = ("import json, os, fastconv; set_ = fastconv.tune_openmp_waiting(); "
            "print(json.dumps([set_, os.environ.get('GOMP_SPINCOUNT'), "
            "os.environ.get('KMP_BLOCKTIME')]))")
    assert json.loads(_run(code, _clean_env(**extra)).stdout) == expected


def test_tune_openmp_waiting_after_a_kernel_ran_warns_and_changes_nothing():
    code = ("import json, os, warnings, numpy as np, fastconv, fastconv.functional as F; "
            "F.relu(np.ones(4, np.float32)); "
            "with_w = warnings.catch_warnings(record=True); w = with_w.__enter__(); "
            "warnings.simplefilter('always'); set_ = fastconv.tune_openmp_waiting(); "
            "quiet = fastconv.tune_openmp_waiting(warn=False); "
            "print(json.dumps([set_, quiet, 'GOMP_SPINCOUNT' in os.environ, "
            "[str(x.message) for x in w]]))")
    set_, quiet, present, messages = json.loads(_run(code, _clean_env()).stdout)
    assert set_ == quiet == {} and present is False
    assert len(messages) == 1 and "before the first fastconv kernel" in messages[0]


def test_the_fastconv_command_sets_the_policy_before_the_kernels_load():
    """``fastconv info`` loads every kernel; the command set the variables first (the main of
    the console script, as ``python -m fastconv`` runs it)."""
    code = ("import json, os, sys, contextlib, io; from fastconv.cli import main; "
            "buf = io.StringIO(); "
            "ctx = contextlib.redirect_stdout(buf); ctx.__enter__(); status = main(['info']); "
            "ctx.__exit__(None, None, None); "
            "print(json.dumps([status, os.environ.get('GOMP_SPINCOUNT'), "
            "os.environ.get('KMP_BLOCKTIME'), "
            "any(m.startswith('fastconv._ext.') for m in sys.modules)]))")
    assert json.loads(_run(code, _clean_env()).stdout) == [0, "2000", "0", True]
