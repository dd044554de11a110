"""python -m numpy_moe.conformance export DIR [--preset NAME ...] | check DIR RESULTS (see the package docstring)."""
import argparse
import sys
import time

from . import CONFIGS, check, export


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numpy_moe.conformance",
                                     description="MoE conformance fixtures: export them, or check results against them")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write <preset>.npz fixtures and manifest.json into DIR")
    ex.add_argument("dir")
    ex.add_argument("--preset", action="append", choices=list(CONFIGS), help="only these presets (repeatable)")
    ex.add_argument("--seed", type=int, default=0)
    ch = sub.add_parser("check", help="compare RESULTS/<preset>.npz with the fixtures in DIR")
    ch.add_argument("dir")
    ch.add_argument("results")
    args = parser.parse_args(argv)
    if args.command == "export":
        start = time.perf_counter()
        try:
            out = export(args.dir, args.preset, args.seed)
        except ValueError as err:  # a bad --seed: the message names it, and nothing was written
            parser.error(str(err))
        except OSError as err:  # DIR is a file, or not writable
            parser.error(f"cannot write the fixtures into {args.dir}: {err}")
        print(f"wrote {len(set(args.preset or CONFIGS))} fixtures and manifest.json to {out} "
              f"in {time.perf_counter() - start:.1f} s")
        return 0
    try:
        return 0 if check(args.dir, args.results) else 1
    except ValueError as err:  # a missing or unreadable fixture directory or results file: exit status 2
        parser.error(str(err))


if __name__ == "__main__":
    sys.exit(main())
