"""What the console scripts share: bad input ends in one line and exit status 2."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from poslab.config import ConfigError, check_group_overrides
from poslab.data.corpora import CorpusUnavailableError

log = logging.getLogger("poslab")


def exit_on_bad_input(task: Callable) -> Callable:
    """Wrap a Hydra task: a ConfigError or an unavailable corpus is logged as one line, exit 2."""

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            return task(cfg)
        except (ConfigError, CorpusUnavailableError) as error:
            log.error("%s", error)
            sys.exit(2)

    return wrapper


def run(prog: str, hydra_main: Callable[[], None]) -> None:
    """Check config-group names on the command line before Hydra starts, then run."""
    try:
        check_group_overrides(sys.argv[1:])
    except ConfigError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    hydra_main()
