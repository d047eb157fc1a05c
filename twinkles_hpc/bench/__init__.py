"""`twinkles-hpc bench ...`: measured speed against peer tools, side by side in one run.

One module per benchmark (imsim, visit, detect, forced, report, diffim, timedelay, engine, storage, startup,
ingest, chain), each with `run(args)` that takes the `bench` subcommand's options and returns the lines to print;
`common` times, describes the machine and records. Only the command line imports this package.
"""
import importlib

from twinkles_hpc.bench import common


def main(args):
    """Run the benchmark `args.what`, print its lines and append them to `args.record` if given."""
    lines = importlib.import_module(f"twinkles_hpc.bench.{args.what}").run(args)
    for line in lines:
        print(line)
    if args.record:
        common.record(args.record, common.command_line(), lines)
        print(f"recorded in {args.record}")
    return 0
