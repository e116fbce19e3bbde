"""`python -m livesight.eval BENCHMARK …`, the entry `accelerate launch -m livesight.eval` runs in
each process; the same as `livesight eval BENCHMARK …`."""

import argparse
import logging
import sys

from livesight.errors import InputError
from livesight.eval.cli import add_arguments, main


class Parser(argparse.ArgumentParser):
    """A bad flag is one line naming it, not the whole usage text (as `livesight`'s own parser)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run(argv: list[str] | None = None) -> int:
    parser = Parser(prog="livesight eval", description="Benchmarks through the streaming engine.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        return main(args)
    except InputError as err:
        print(f"livesight eval: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
