"""``fastconv bench``: how fast fastconv's layers and models are, against what, and why.

Modules, one concern each:

=============  ==============================================================
shapes         the layer suite
timing         the one place that times: warm-up, repeats within a budget, page faults
cases          what is timed: inputs, fastconv calls, FLOP and byte models per op
torch_impl     PyTorch's ops and models on the same data (optional import)
models         whole models: training steps and inference (LeNet-5, ResNet-20)
overhead       per-call overhead of the op API on tiny inputs
worker         each engine's worker process, where every timing runs
memory         peak extra memory of each conv algorithm, in a fresh process
environment    CPU, cores, OpenMP, BLAS (threadpoolctl), versions, warnings
runner         runs the selection in the workers, alternating, and computes the ratios:
               one JSON-ready document
report         the terminal tables, --compare and --markdown
jsonfile       --json (atomic write) and --compare (load)
plot           --plot (matplotlib, optional)
cli            configure_parser(parser) and run(args), used by ``fastconv bench``
=============  ==============================================================

Programmatic use::

    from fastconv.benchmark.runner import Settings, run_benchmarks
    doc = run_benchmarks(Settings.from_options(quick=True, filters=["conv2d_fwd"]))

The project's performance targets are a developer tool outside the package:
``python bench/targets.py RUN.json`` in a source checkout evaluates them from a ``--json`` run.
"""
