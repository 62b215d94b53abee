"""Command line: ``python -m bptt demo [--quick | --full] [--out DIR] [--seed N] ...``.

``demo`` trains RNNs and LSTMs on the adding problem and reports vanishing gradients,
the effect of gating, of the truncation window and of gradient clipping (see
``bptt.demo``). ``python -m bptt demo --help`` lists every option.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatches the sub-commands (only ``demo`` for now)."""
    parser = argparse.ArgumentParser(prog="python -m bptt",
                                     description="bptt command-line tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import demo

    demo.build_parser(sub.add_parser("demo", help="why LSTMs exist: four experiments on "
                                                  "the adding problem"))
    args = parser.parse_args(argv)
    if args.command != "demo":
        parser.print_help()
        return 2
    return demo.run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
