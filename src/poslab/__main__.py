"""`python -m poslab COMMAND ARGS...`: the console scripts without their launchers on PATH
(COMMAND is train, eval, inspect or report, as in poslab-train, poslab-eval, ...)."""

import sys

from poslab import cli

COMMANDS = {"train": cli.train_main, "eval": cli.eval_main, "inspect": cli.inspect_main, "report": cli.report_main}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m poslab {{{','.join(COMMANDS)}}} ARGS...", file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    sys.argv[0] = f"poslab-{command}"
    COMMANDS[command]()


if __name__ == "__main__":
    main()
