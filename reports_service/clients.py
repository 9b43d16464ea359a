"""The tutorial's command-line clients: type a message, see the reply, `q` to quit."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .pipes import quiet_when_cut

DEFAULT_URL = "ws://127.0.0.1:8000"


def _parser(prog: str, description: str, with_token: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--url",
        default=os.environ.get("REPORTS_URL", DEFAULT_URL),
        help="server base URL (env REPORTS_URL, default %(default)s)",
    )
    if with_token:
        parser.add_argument(
            "--token",
            default=os.environ.get("REPORTS_TOKEN"),
            help="access token for /reports (env REPORTS_TOKEN)",
        )
    return parser


async def talk(uri: str, prompt: str, token: str | None = None) -> int:
    """Send each line typed at ``prompt`` and print the reply, until `q` or end of input."""
    try:
        async with websockets.connect(uri) as ws:
            if token is not None:
                await ws.send(token)
            while True:
                try:
                    message = await asyncio.to_thread(input, prompt)
                except EOFError:
                    return 0
                if message.casefold() == "q":
                    return 0
                await ws.send(message)
                print(await ws.recv(), flush=True)
    except ConnectionClosed as closed:
        reason = f" ({closed.rcvd.reason})" if closed.rcvd and closed.rcvd.reason else ""
        code = closed.rcvd.code if closed.rcvd else "none"
        print(f"connection closed by the server: {code}{reason}", file=sys.stderr)
    except BrokenPipeError:
        raise  # NOTE: our output was cut, not the connection (see pipes.quiet_when_cut)
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as error:
        print(f"cannot connect to {uri}: {error}", file=sys.stderr)
    return 1


@quiet_when_cut
def echo_main(argv: Sequence[str] | None = None) -> int:
    args = _parser("echo-client", "Talk to /echo.", with_token=False).parse_args(argv)
    return asyncio.run(talk(args.url.rstrip("/") + "/echo", "Enter a message (q to exit): "))


@quiet_when_cut
def reports_main(argv: Sequence[str] | None = None) -> int:
    parser = _parser("reports-client", "Ask /reports for reports by name.", with_token=True)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("an access token is needed: --token or REPORTS_TOKEN")
    uri = args.url.rstrip("/") + "/reports"
    return asyncio.run(talk(uri, "Name of the report (q to exit): ", args.token))
