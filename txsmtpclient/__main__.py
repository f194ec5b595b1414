"""
``python -m txsmtpclient``: queue mail in a spool and inspect the queue.

Commands: ``enqueue``, ``list``, ``show ID``, ``cancel ID``, ``retry ID``,
``counts`` and ``sendmail`` (sendmail(1)-compatible).  The work is done in
:mod:`txsmtpclient.spool.cli`.
"""

from __future__ import annotations

import sys

from txsmtpclient.spool.cli import main as _cli_main

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """
    Parse the command line and run the command.

    :param argv: the arguments after the program name (default
        ``sys.argv[1:]``).
    :returns: the exit status.
    """
    return _cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
