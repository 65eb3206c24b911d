"""The fastconv command: train, summary, info, bench and --help."""
import json
import os

import pytest

from fastconv.cli import build_parser, main
from helpers import run_python


def test_help_explains_every_train_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"
            assert action.option_strings[0] in text
    for word in ("--model", "--dataset", "--epochs", "--batch-size", "--optimizer", "--lr",
                 "--schedule", "--augment", "--threads", "--seed", "--checkpoint", "--resume", "--out"):
        assert word in text


def test_top_level_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "summary", "info", "bench"):
        assert cmd in out


@pytest.mark.slow
def test_train_tiny_run_and_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "nothing"))
    out = tmp_path / "run"
    args = ["train", "--dataset", "fashion-mnist-subset", "--limit", "256", "--limit-test", "200",
            "--batch-size", "64", "--epochs", "1", "--out", str(out), "--no-progress",
            "--threads", "1", "--seed", "3"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "epoch   1/1" in text and "done: test accuracy" in text
    assert {"checkpoint.npz", "history.csv", "history.json"} <= set(os.listdir(out))
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1] and 0 <= history["test_acc"][0] <= 1
    # resume to 2 epochs from the checkpoint
    args[args.index("--epochs") + 1] = "2"
    assert main(args + ["--resume"]) == 0
    text = capsys.readouterr().out
    assert "resumed from" in text and "epoch   2/2" in text and "epoch   1/2" not in text
    assert json.loads((out / "history.json").read_text())["epoch"] == [1, 2]
    # a resume with another model is refused with a clear message
    assert main(args + ["--resume", "--model", "lenet5_bn"]) == 2
    err = capsys.readouterr().err
    assert "model='lenet5'" in err and "conflicts" in err and err.count("\n") == 1


def test_train_resume_bad_checkpoint(tmp_path, capsys):
    """A damaged checkpoint is a failure of the run (status 1): one line, no traceback."""
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    code = main(["train", "--dataset", "fashion-mnist-subset", "--limit", "64", "--epochs", "1",
                 "--out", str(tmp_path), "--no-progress", "--resume", str(bad)])
    assert code == 1
    err = capsys.readouterr().err
    assert "truncated or not a fastconv" in err and "Traceback" not in err


def test_train_auto_dataset_falls_back_to_subset(tmp_path, capsys, monkeypatch):
    """With no Fashion-MNIST anywhere on the search path, plain `fastconv train` uses the
    embedded subset and says so."""
    import fastconv.data.datasets as datasets
    monkeypatch.setitem(datasets._SYSTEM_DIRS, "fashion-mnist", str(tmp_path / "none"))
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    assert main(["train", "--limit", "128", "--limit-test", "100", "--epochs", "1",
                 "--batch-size", "64", "--out", str(tmp_path / "o"), "--no-progress",
                 "--no-checkpoint"]) == 0
    out = capsys.readouterr().out
    assert "EMBEDDED SUBSET" in out and "fashion-mnist-subset" in out
    assert not (tmp_path / "o" / "checkpoint.npz").exists()


def test_lr_find_command(tmp_path, capsys):
    assert main(["train", "--dataset", "fashion-mnist-subset", "--limit", "160", "--batch-size", "32", "--threads", "1",
                 "--lr-find", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "suggested lr" in out and "a tenth of the LR of the lowest loss" in out
    assert (tmp_path / "lr_find.csv").is_file() and (tmp_path / "lr_find.npz").is_file()


def test_bad_option_values(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "0"])
    with pytest.raises(SystemExit):
        main(["train", "--model", "nosuchnet"])
    assert main(["train", "--dataset", "fashion-mnist-subset", "--augment", "spin",
                 "--no-progress"]) == 2
    assert "unknown augmentation" in capsys.readouterr().err


def test_summary_and_info(capsys):
    assert main(["summary", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "61,706" in out or "61706" in out
    assert main(["summary", "resnet20", "--input-shape", "3", "32", "32"]) == 0
    assert main(["info"]) == 0
    assert "fastconv" in capsys.readouterr().out


def test_bench_dispatch(capsys, monkeypatch):
    """`fastconv bench` imports fastconv.benchmark.cli only when asked; without it, a clear message."""
    import fastconv.cli as cli

    def missing():
        raise ImportError("No module named 'fastconv.benchmark.cli'")
    monkeypatch.setattr(cli, "_bench_module", missing)
    assert main(["bench"]) == 2
    assert "fastconv bench is not available" in capsys.readouterr().err

    class Fake:
        @staticmethod
        def configure_parser(parser):
            parser.add_argument("--quick", action="store_true")

        @staticmethod
        def run(args):
            print(f"bench ran quick={args.quick}")
            return 0
    monkeypatch.setattr(cli, "_bench_module", lambda: Fake)
    assert main(["bench", "--quick"]) == 0
    assert "bench ran quick=True" in capsys.readouterr().out


@pytest.mark.slow
def test_console_entry_points():
    """`python -m fastconv` works (the `fastconv` script is the same main, via [project.scripts])."""
    res = run_python(["-m", "fastconv", "--version"])
    assert res.returncode == 0 and "fastconv" in res.stdout
    res = run_python(["-m", "fastconv", "summary", "lenet5"])
    assert res.returncode == 0 and "conv1" in res.stdout


# --------------------------------------------------------------------------- run folders

TINY = ["train", "--dataset", "fashion-mnist-subset", "--limit", "128", "--limit-test", "100",
        "--batch-size", "64", "--epochs", "1", "--no-progress", "--threads", "1"]


def test_each_run_gets_its_own_folder(tmp_path, monkeypatch, capsys):
    """Two runs never share a folder: runs/MODEL-DATASET/001, 002, ..., latest -> the newest;
    the first run's checkpoint is left exactly as it was."""
    monkeypatch.chdir(tmp_path)
    assert main(TINY) == 0
    group = tmp_path / "runs" / "lenet5-fashion-mnist-subset"
    first = (group / "001" / "checkpoint.npz").read_bytes()
    assert main(TINY + ["--lr-find"]) == 0                  # an LR range test is a run too
    assert main(TINY + ["--seed", "5"]) == 0
    assert sorted(p.name for p in group.iterdir()) == ["001", "002", "003", "latest"]
    assert (group / "001" / "checkpoint.npz").read_bytes() == first
    assert not (group / "001" / "lr_find.npz").exists() and (group / "002" / "lr_find.npz").is_file()
    assert os.path.realpath(group / "latest") == str(group / "003")
    assert "output folder runs/lenet5-fashion-mnist-subset/003" in capsys.readouterr().out


def test_out_of_an_earlier_run_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    (out / "lr_find.npz").write_bytes(b"old")               # a stale file of an earlier test
    before = (out / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    assert main(TINY + ["--out", str(out), "--seed", "9"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err and err.count("\n") == 1
    assert (out / "checkpoint.npz").read_bytes() == before
    assert main(TINY + ["--out", str(out), "--seed", "9", "--overwrite"]) == 0
    assert (out / "checkpoint.npz").read_bytes() != before
    assert not (out / "lr_find.npz").exists()               # nothing of the old run is left


def test_resume_finds_the_latest_run_and_uses_its_options(tmp_path, monkeypatch, capsys):
    """`--resume` alone continues the newest run with the options it was started with; an
    option given again with another value is refused; a run folder is a valid PATH."""
    monkeypatch.chdir(tmp_path)
    assert main(TINY + ["--model", "lenet5_bn", "--lr", "0.02", "--batch-size", "32"]) == 0
    folder = tmp_path / "runs" / "lenet5_bn-fashion-mnist-subset" / "001"
    from fastconv.train import read_checkpoint
    options = read_checkpoint(folder / "checkpoint.npz")["meta"]["meta"]["options"]
    assert options["lr"] == 0.02 and options["batch_size"] == 32 and options["model"] == "lenet5_bn"
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {os.path.join('runs', 'lenet5_bn-fashion-mnist-subset', '001', 'checkpoint.npz')}" in out
    assert "lr=0.02" in out and "batch 32" in out and "epoch   2/2" in out
    history = json.loads((folder / "history.json").read_text())
    assert history["epoch"] == [1, 2] and len(history["step_loss"]) == 2 * (128 // 32)
    assert not (folder.parent / "002").exists()             # a resumed run stays in its folder
    assert main(["train", "--resume", str(folder), "--batch-size", "64"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 64 conflicts" in err and "batch_size=32" in err
    assert main(["train", "--resume", str(folder), "--lr", "0.02", "--epochs", "2",
                 "--no-progress"]) == 0                    # the same value again is fine
    monkeypatch.chdir(tmp_path / "runs")
    assert main(["train", "--resume"]) == 2
    assert "no checkpoint in runs/" in capsys.readouterr().err


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("argv, words", [
    (["train", "--lr", "abc"], ["--lr", "expected a number > 0, got 'abc'"]),
    (["train", "--lr", "0"], ["--lr", "expected a number > 0, got 0"]),
    (["train", "--epochs", "x"], ["--epochs", "expected a positive integer"]),
    (["train", "--pct-start", "2"], ["--pct-start", "between 0 and 1"]),
    (["train", "--data-dir", "/nonexistent/fastconv-data"], ["--data-dir", "no such folder"]),
    (["summary", "lenet5", "--input-shape", "1", "28", "30"], ["square images"]),
    (["nosuchcommand"], ["invalid choice"]),
])
def test_usage_errors_are_one_line_with_status_2(argv, words, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:               # argparse's own errors exit from parse_args
        code = exc.code
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    for word in words:
        assert word in captured.err


def test_runtime_errors_are_one_line_with_status_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "nothing"))
    import fastconv.data.datasets as datasets
    monkeypatch.setitem(datasets._SYSTEM_DIRS, "mnist", str(tmp_path / "none"))
    assert main(["train", "--dataset", "mnist", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "dataset 'mnist' not found" in err and err.count("\n") == 1
    # a diverging run: the loss becomes NaN or Inf at once with an absurd learning rate
    assert main(TINY + ["--limit", "640", "--lr", "1e6", "--schedule", "constant",
                        "--out", str(tmp_path / "nan")]) == 1
    err = capsys.readouterr().err
    assert "the loss became" in err and "lower the learning rate" in err and err.count("\n") == 1
    with pytest.raises(FileNotFoundError):                  # --debug: the traceback
        main(["train", "--dataset", "mnist", "--no-progress", "--debug"])


def test_broken_pipe_is_quiet(tmp_path):
    """`fastconv summary resnet56 | head -1`: the reader goes away, no traceback."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "fastconv", "summary", "resnet56"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()                     # before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_train_warns_when_the_cores_are_busy(tmp_path, monkeypatch, capsys):
    import fastconv.benchmark.environment as environment
    import fastconv.cli as cli
    monkeypatch.setattr(environment, "load_average", lambda: [3.5, 3.0, 2.0])
    text = environment.busy_cores_warning()
    assert text.startswith("load average 3.50 on")
    said = []
    cli._load_warning(4, said.append)
    assert len(said) == 1 and "--threads 1" in said[0] and "load average 3.50" in said[0]
    cli._load_warning(1, said.append)                       # one thread: nothing to choose
    assert len(said) == 1
    monkeypatch.setattr(environment, "load_average", lambda: [0.1, 0.1, 0.1])
    assert environment.busy_cores_warning() is None
    # the whole command: the note appears only when --threads is not given
    monkeypatch.setattr(environment, "load_average", lambda: [3.5, 3.0, 2.0])
    import fastconv
    monkeypatch.setattr(fastconv, "get_num_threads", lambda: 2)
    argv = TINY[:TINY.index("--threads")] + TINY[TINY.index("--threads") + 2:]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    assert "note: load average 3.50" in capsys.readouterr().out
    assert main(TINY + ["--out", str(tmp_path / "b")]) == 0
    assert "note: load average" not in capsys.readouterr().out
