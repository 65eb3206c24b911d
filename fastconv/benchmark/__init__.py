"""``fastconv bench``: how fast fastconv's layers and models are, against what, and why.

Modules, one concern each:

=============  ==============================================================
shapes         the layer suite (a copy of the project's shared bench/shapes.py)
timing         the one place that times: warm-up, repeats within a budget, page faults
cases          what is timed: inputs, fastconv calls, FLOP and byte models per op
torch_impl     PyTorch's ops and models on the same data (optional import)
models         whole-model training steps (LeNet-5, ResNet-20)
memory         peak extra memory of each conv algorithm, in a fresh process
environment    CPU, cores, OpenMP, BLAS (threadpoolctl), versions, warnings
runner         runs the selection and computes the ratios: one JSON-ready document
targets        the performance targets, evaluated from a document
report         the terminal tables (targets last), --compare and --markdown
jsonfile       --json (atomic write) and --compare (load)
plot           --plot (matplotlib, optional)
cli            configure_parser(parser) and run(args), used by ``fastconv bench``
=============  ==============================================================

Programmatic use::

    from fastconv.benchmark.runner import Settings, run_benchmarks
    doc = run_benchmarks(Settings.from_options(quick=True, filters=["conv2d_fwd"]))
"""
