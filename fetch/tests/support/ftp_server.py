"""A small FTP server for herd-fetch's tests and scripts/start-ftp.sh (pyftpdlib).

Serves ROOT on 127.0.0.1 only: USER/PASSWORD may read and write, anonymous may read. Passive
data connections are on loopback too (pyftpdlib binds them to the control connection's
address). Prints the port it listens on, alone on the first line of stdout, once it accepts
connections. With --watch-stdin it exits when its standard input closes, so a test's server
never outlives the test process. Commands are logged to --log (or stderr). With
--cut-retr-after N the first download of each file breaks after N bytes (the data connection
closes and the server answers 426), as a flaky archive server would; later downloads of it,
with or without REST, are whole.
"""

import argparse
import errno
import logging
import os
import sys
import threading

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


class CutFile:
    """A file opened for a download that fails after `limit` bytes."""

    def __init__(self, file, limit):
        self._file = file
        self._left = limit

    def read(self, size=-1):
        if self._left <= 0:
            raise OSError(errno.EIO, "download cut by the test server")
        if size < 0 or size > self._left:
            size = self._left
        data = self._file.read(size)
        self._left -= len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._file, name)


def cutting_filesystem(limit):
    """A filesystem whose first download of each file breaks after `limit` bytes."""
    cut = set()

    class CuttingFS(AbstractedFS):
        def open(self, filename, mode):
            file = super().open(filename, mode)
            if "r" in mode and filename not in cut:
                cut.add(filename)
                return CutFile(file, limit)
            return file

    return CuttingFS


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log")
    parser.add_argument("--no-mlsd", action="store_true", help="hide MLSD/MLST (LIST only)")
    parser.add_argument("--watch-stdin", action="store_true")
    parser.add_argument("--cut-retr-after", type=int, help="break each file's first download after N bytes")
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
    if args.cut_retr_after is not None:
        Handler.abstracted_fs = cutting_filesystem(args.cut_retr_after)
        # sendfile() would send the file without reading it through CutFile.
        Handler.use_sendfile = False
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
