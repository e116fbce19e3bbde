"""`python -m livesight.eval BENCHMARK …`, the entry `accelerate launch -m livesight.eval` runs in
each process; the same as `livesight eval BENCHMARK …`."""

import logging
import sys

from livesight import scratch
from livesight.errors import InputError
from livesight.eval.cli import add_arguments, main
from livesight.streaming.options import Parser


def run(argv: list[str] | None = None) -> int:
    parser = Parser(prog="livesight eval", description="Benchmarks through the streaming engine.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    scratch.exit_on_sigterm()  # as `livesight`: temporary folders go on SIGTERM, and those of killed runs now
    scratch.sweep()
    try:
        return main(args)
    except InputError as err:
        print(f"livesight eval: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
