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
    assert "model='lenet5'" in capsys.readouterr().out


def test_train_resume_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    code = main(["train", "--dataset", "fashion-mnist-subset", "--limit", "64", "--epochs", "1",
                 "--out", str(tmp_path), "--no-progress", "--resume", str(bad)])
    assert code == 2
    assert "truncated or not a fastconv" in capsys.readouterr().out


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
    assert "suggested lr" in out
    assert (tmp_path / "lr_find.csv").is_file() and (tmp_path / "lr_find.npz").is_file()


def test_bad_option_values(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "0"])
    with pytest.raises(SystemExit):
        main(["train", "--model", "nosuchnet"])
    assert main(["train", "--dataset", "fashion-mnist-subset", "--augment", "spin",
                 "--no-progress"]) == 2
    assert "unknown augmentation" in capsys.readouterr().out


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
