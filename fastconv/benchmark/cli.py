"""``fastconv bench``: the command-line glue (options in, report and files out).

``fastconv/cli.py`` dispatches ``fastconv bench ...`` here through :func:`configure_parser`
and :func:`run`; ``python -m fastconv.benchmark ...`` does the same on its own.
"""
import argparse
import shlex
import sys

DESCRIPTION = """\
Time fastconv's layers (conv forward and backward, max/avg pooling, batch norm) on the
shared layer suite for every backend and algorithm (reference, fast direct, fast im2col,
fast auto) and, when it is installed, PyTorch on the same data; whole-model training steps
(LeNet-5, ResNet-20) and inference (ResNet-20 batch 128, LeNet-5 batch 1); the per-call
overhead of the op API on tiny inputs; and the peak memory of each conv algorithm.

Each engine runs in a worker process of its own (without OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE), the two alternating: every case is timed in --rounds rounds and keeps
its best round's median; "spread" is how far the rounds' medians were apart.
Ratios "vs torch" are PyTorch's median / fastconv's (> 1: fastconv is faster).
"""

EPILOG = """\
examples:
  fastconv bench                          # the whole suite, 1 thread and all cores
  fastconv bench --quick                  # a smoke test of a few seconds
  fastconv bench --filter conv2d_fwd --threads 1,2,4
  fastconv bench --filter overhead        # per-call overhead of the op API vs PyTorch
  fastconv bench --filter train_step,inference --rounds 5
  fastconv bench --filter resnet20_s1,lenet --json new.json --compare old.json
  fastconv bench --json run.json --plot run.png
  fastconv bench --report run.json --markdown run.md   # a saved run again, nothing timed
"""


def _thread_list(text):
    try:
        threads = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads wants comma-separated integers, got {text!r}")
    if not threads or threads[0] < 1:
        raise argparse.ArgumentTypeError(f"--threads wants integers >= 1, got {text!r}")
    return threads


def _positive(text):
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _rounds(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--rounds wants an integer >= 1, got {text!r}")
    return value


def configure_parser(parser):
    """Add every ``fastconv bench`` option to ``parser``; returns it."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--threads", type=_thread_list, default=None, metavar="N,N,...",
                        help="thread counts to measure (default: 1 and all usable cores)")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds in all: batch 2, a few repeats (a smoke test, "
                             "the figures are not meaningful)")
    parser.add_argument("--filter", action="append", default=[], metavar="SUBSTR",
                        help="run only the cases whose id 'op:layer:impl' contains SUBSTR "
                             "(comma-separated or repeated: any of them), e.g. conv2d_fwd, "
                             "resnet20_s1, fast:im2col, torch, train_step, inference, "
                             "overhead")
    parser.add_argument("--budget", type=_positive, default=None, metavar="SECONDS",
                        help="time spent on each case (default 0.25, --quick 0.005)")
    parser.add_argument("--rounds", type=_rounds, default=None, metavar="N",
                        help="rounds per case, the engines' worker processes alternating; "
                             "each case keeps its best round (default 3, --quick 2)")
    parser.add_argument("--json", metavar="FILE", help="write every figure and the environment")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw GFLOP/s per layer and thread scaling (needs matplotlib)")
    parser.add_argument("--markdown", metavar="FILE.md",
                        help="write a compact Markdown table (reference / fast / PyTorch "
                             "medians per layer and thread count) for a README")
    parser.add_argument("--compare", metavar="OLD.json",
                        help="show the change of each median against a saved --json run")
    parser.add_argument("--report", metavar="SAVED.json",
                        help="time nothing: print the report of a saved --json run; "
                             "--markdown, --compare, --json and --plot then use that run")
    parser.add_argument("--list", action="store_true", help="list the selected cases and exit")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--no-models", action="store_true", help="skip the training steps")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="leave glibc's malloc at its defaults (by default it keeps freed "
                             "memory for reuse, as a training run does: "
                             "fastconv.keep_freed_memory)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def _filters(values):
    return [f.strip() for value in values for f in value.split(",") if f.strip()]


def _list_cases(settings):
    from .runner import list_case_ids
    for case_id in list_case_ids(settings):
        print(case_id)
    return 0


def run(args):
    """Run ``fastconv bench`` with parsed ``args``; returns the exit status.

    0: every selected case ran or was unavailable (a kernel not built yet, PyTorch not
    installed); 1: a case raised an error; 2: bad options or files.
    """
    from . import jsonfile, plot, report, runner

    settings = runner.Settings.from_options(
        threads=args.threads, quick=args.quick, budget_s=args.budget, rounds=args.rounds,
        filters=_filters(args.filter), with_torch=not args.no_torch,
        with_models=not args.no_models, with_memory=not args.no_memory,
        keep_freed_memory=not args.glibc_malloc,
        progress=not args.no_progress, command=shlex.join(sys.argv))
    if args.list:
        return _list_cases(settings)
    if args.plot and plot.require():
        print(f"fastconv bench: {plot.require()}", file=sys.stderr)
        return 2
    saved = {}
    for option in ("compare", "report"):
        path = getattr(args, option)
        if path:
            try:
                saved[option] = jsonfile.load(path)
            except (OSError, ValueError) as exc:
                print(f"fastconv bench: cannot read --{option} file: {exc}", file=sys.stderr)
                return 2
    old = saved.get("compare")

    if args.report:
        doc = saved["report"]
    else:
        doc = runner.run_benchmarks(settings)
    print(report.format_report(doc))
    if old is not None:
        doc["compared_with"] = args.compare
        print(report.compare(doc, old))
    if args.json:
        jsonfile.save(doc, args.json)
        print(f"fastconv bench: wrote {args.json}", file=sys.stderr)
    if args.markdown:
        jsonfile.write_text(report.markdown(doc), args.markdown)
        print(f"fastconv bench: wrote {args.markdown}", file=sys.stderr)
    if args.plot:
        plot.save(doc, args.plot)
        print(f"fastconv bench: wrote {args.plot}", file=sys.stderr)
    if args.report:
        return 0
    if not any(doc.get(key) for key in ("results", "models", "inference", "overhead")):
        print("fastconv bench: no case matches the filter (see --list)", file=sys.stderr)
        return 2
    errors = [r for r in doc["unavailable"] if r["status"] == "error"]
    return 1 if errors else 0


def main(argv=None):
    """``python -m fastconv.benchmark``: the same as ``fastconv bench``."""
    from .. import tune_openmp_waiting
    tune_openmp_waiting(warn=False)  # as the fastconv command does, before any kernel loads
    parser = argparse.ArgumentParser(prog="fastconv bench")
    configure_parser(parser)
    return run(parser.parse_args(argv))
