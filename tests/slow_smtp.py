"""A real SMTP server that takes a whole message and is then slow to say so: run as a
subprocess by the job tests, to cut a job off while its send is in flight.

    python -m tests.slow_smtp PORT RECEIVED_FILE [DELAY_SECONDS]

Every message it is given is appended to RECEIVED_FILE (followed by a line ``=====``)
the moment its final ``.`` arrives, before the ``250`` reply, which comes DELAY seconds
later (default 60): the file is the ground truth of what the server has.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path


def serve(conn: socket.socket, received: Path, delay: float) -> None:
    reader = conn.makefile("rb")
    conn.sendall(b"220 slow ESMTP\r\n")
    lines: list[bytes] | None = None  # inside DATA: the message so far
    while line := reader.readline():
        if lines is not None:
            if line != b".\r\n":
                lines.append(line)
                continue
            with received.open("ab") as fh:
                fh.write(b"".join(lines) + b"=====\n")
            lines = None
            time.sleep(delay)
            reply = b"250 queued\r\n"
        else:
            verb = line[:4].upper()
            if verb == b"DATA":
                lines = []
                reply = b"354 go ahead\r\n"
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:  # EHLO, HELO, MAIL, RCPT, RSET, NOOP
                reply = b"250 ok\r\n"
        try:
            conn.sendall(reply)
        except OSError:  # the client is gone (killed mid-send)
            return


def main() -> None:
    port, received = int(sys.argv[1]), Path(sys.argv[2])
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    server = socket.create_server(("127.0.0.1", port))
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn, received, delay), daemon=True).start()


if __name__ == "__main__":
    main()
