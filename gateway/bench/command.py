"""`gateway bench` from its parsed arguments: run, print the report, write its JSON and its chart; failures in one line."""

from __future__ import annotations

import argparse

from gateway.bench.main import run_bench
from gateway.bench.plot import PlotError, check_plot_target, write_plot
from gateway.bench.report import format_report, write_report
from gateway.bench.run import BenchError


def bench(args: argparse.Namespace) -> int:
    try:
        if args.plot:  # before the run: a chart that cannot be drawn is said at once, not after minutes of it
            check_plot_target(args.plot)
            if args.live:
                raise PlotError("--plot draws the batching run and --history; --live has no chart")
        report = run_bench(args)
        print(format_report(report, args.json))
        write_report(report, args.out)
        if args.plot:
            write_plot(report, args.plot)
    except (BenchError, PlotError) as exc:
        raise SystemExit(f"gateway bench: {exc}") from None
    return 0
