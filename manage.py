#!/usr/bin/env python
"""Django's command-line utility for jmirror-web."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jmirror_web.settings")
    from django.core.management import execute_from_command_line

    from jmirror_web.environment import ConfigurationError

    try:
        execute_from_command_line(sys.argv)
    except ConfigurationError as error:
        # A bad environment variable is the operator's to fix, not a crash: one line that
        # names the variable says more than a traceback through Django's settings loader.
        print(f"jmirror-web: configuration error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
