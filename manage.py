#!/usr/bin/env python
"""Django's command-line utility for jmirror-web."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jmirror_web.settings")
    from jmirror_web.environment import ConfigurationError

    try:
        if sys.argv[1:2] == ["decode"]:
            # decode reads a capture file and uses no app, model or database: it runs
            # without django.setup(), whose loading of every app (Daphne's Twisted
            # reactor above all) took 0.65 s of CPU, a third of decoding 400,000 packets.
            from receiver.management.commands.decode import Command

            Command().run_from_argv(sys.argv)
        else:
            from django.core.management import execute_from_command_line

            execute_from_command_line(sys.argv)
    except ConfigurationError as error:
        # A bad environment variable is the operator's to fix, not a crash: one line that
        # names the variable says more than a traceback through Django's settings loader.
        print(f"jmirror-web: configuration error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
