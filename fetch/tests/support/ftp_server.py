"""A small FTP server for herd-fetch's tests and scripts/start-ftp.sh (pyftpdlib).

Serves ROOT on 127.0.0.1 only: USER/PASSWORD may read and write, anonymous may read. Passive
data connections are on loopback too (pyftpdlib binds them to the control connection's
address). Prints the port it listens on, alone on the first line of stdout, once it accepts
connections. With --watch-stdin it exits when its standard input closes, so a test's server
never outlives the test process. Commands are logged to --log (or stderr).
"""

import argparse
import logging
import os
import sys
import threading

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log")
    parser.add_argument("--no-mlsd", action="store_true", help="hide MLSD/MLST (LIST only)")
    parser.add_argument("--watch-stdin", action="store_true")
    args = parser.parse_args()

    logging.basicConfig(
        filename=args.log,
        level=logging.DEBUG,
        format="%(asctime)s %(message)s",
    )

    authorizer = DummyAuthorizer()
    authorizer.add_user(args.user, args.password, args.root, perm="elradfmwMT")
    authorizer.add_anonymous(args.root, perm="elr")

    class Handler(FTPHandler):
        pass

    Handler.authorizer = authorizer
    Handler.banner = "herd test ftp server ready"
    if args.no_mlsd:
        Handler.proto_cmds = {
            name: info
            for name, info in FTPHandler.proto_cmds.items()
            if name not in ("MLSD", "MLST")
        }

    server = FTPServer(("127.0.0.1", args.port), Handler)
    port = server.socket.getsockname()[1]
    print(port, flush=True)

    if args.watch_stdin:
        def watch():
            sys.stdin.read()
            os._exit(0)

        threading.Thread(target=watch, daemon=True).start()

    server.serve_forever()


if __name__ == "__main__":
    main()
