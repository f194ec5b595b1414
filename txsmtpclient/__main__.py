"""
``python -m txsmtpclient``: queue mail in a spool and inspect the queue.

Commands: ``enqueue``, ``list``, ``show ID``, ``cancel ID``, ``retry ID``,
``counts`` and ``sendmail`` (sendmail(1)-compatible), done in
:mod:`txsmtpclient.spool.cli`; and ``demo``, the daemon delivering a
scheduled message to an embedded local sink (:mod:`txsmtpclient.demo`).
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
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        from txsmtpclient.demo import main as demo_main

        return demo_main(args[1:])
    return _cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
