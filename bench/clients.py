"""
Run one client in one scenario against a running sink, in this fresh process, and print
one JSON line with the measurement.  ``bench/run.py`` starts one of these per
repetition; run it by hand to look at one client::

    .venv/bin/python bench/clients.py smtplib a --port 2525
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Measure the checkout this file is in, whether or not txsmtpclient is installed.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from workload import CLIENT_SCENARIOS, CLIENTS, SCENARIOS, workload_for


def main(argv: list[str] | None = None) -> None:
    """
    Parse the command line, import only the chosen client's module (so that no client
    pays for another's imports), and run it.

    :raises SystemExit: on a bad command line.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("client", choices=CLIENTS)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--port", type=int, required=True, help="the sink's port on 127.0.0.1")
    parser.add_argument("--smoke", action="store_true", help="the tiny version, for CI")
    args = parser.parse_args(argv)
    client: str = args.client
    if args.scenario not in CLIENT_SCENARIOS[client]:
        parser.error(f"{client} does not run scenario {args.scenario}")
    workload = workload_for(args.scenario, client, smoke=args.smoke)

    if client in ("smtplib", "raw"):
        import blocking_clients

        blocking_clients.run(client, workload, args.port)
    elif client == "aiosmtplib":
        import aio_clients

        aio_clients.run(client, workload, args.port)
    else:
        # The Twisted clients use the default reactor on Linux, installed explicitly so
        # that nothing imported first can choose another.
        from twisted.internet import epollreactor

        epollreactor.install()
        if client.startswith("txsmtpclient"):
            import tx_clients

            tx_clients.run(client, workload, args.port)
        else:
            import twisted_clients

            twisted_clients.run(client, workload, args.port)


if __name__ == "__main__":
    main()
