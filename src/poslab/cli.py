"""The console scripts' front door: bad input ends in one line and exit status 2."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from poslab.config import ConfigError, check_group_overrides

log = logging.getLogger("poslab")


def exit_on_bad_input(task: Callable) -> Callable:
    """Wrap a Hydra task: a ConfigError or an unavailable corpus is logged as one line, exit 2."""

    @functools.wraps(task)
    def wrapper(cfg):
        from poslab.data.corpora import CorpusUnavailableError  # here: the front door stays light

        try:
            return task(cfg)
        except (ConfigError, CorpusUnavailableError) as error:
            log.error("%s", error)
            sys.exit(2)

    return wrapper


def check_command_line(prog: str) -> None:
    """Check config-group names on the command line before Hydra, torch or Lightning load, so a
    typo is answered in a second, in one line."""
    try:
        check_group_overrides(sys.argv[1:])
    except ConfigError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)


def train_main() -> None:
    """The poslab-train console script."""
    check_command_line("poslab-train")
    from poslab.train import hydra_main

    hydra_main()


def eval_main() -> None:
    """The poslab-eval console script."""
    check_command_line("poslab-eval")
    from poslab.eval import hydra_main

    hydra_main()
