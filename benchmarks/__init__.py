"""Benchmarks: spawn, migrate and cache costs against the floor and legacy.

Run ``python -m benchmarks`` (``--help`` for options). Every figure is a
ratio of two medians measured in the same run (the library's way vs a
baseline: the bare commands an operator would run, the legacy ``cache()``
path, a plain-I/O pass...), with the raw samples of both sides in the JSON
report. Absolute times are context only: these machines are noisy.

Layout: :mod:`benchmarks.core` (repetitions, figures, targets, the table),
:mod:`benchmarks.env` (hosts, images, sizes), :mod:`benchmarks.floors` (one
entry per backend: the bare commands that are that backend's floor),
:mod:`benchmarks.reflinkfs` (a loop-mounted XFS), one module per suite in
:mod:`benchmarks.suites`, and :mod:`benchmarks.cli` (the command).
"""
