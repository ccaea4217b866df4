"""Real SMTP servers on 127.0.0.1 for the gate tests.

`Recorder` is an aiosmtpd server (a real SMTP implementation, in a thread, over
TCP) that keeps every message it accepted. `reply` makes it answer DATA with a
chosen status instead. `DroppingServer` is a raw socket server that reads a
whole message and then closes the connection without answering: the client
cannot know whether it was accepted (it was); it can also hang after DATA, or
never greet at all.
"""

from __future__ import annotations

import email
import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    message_id: str
    to: str
    subject: str
    body: str
    raw: bytes
    rcpts: list[str] = field(default_factory=list)  # the envelope's RCPT TO

    def content_sha256(self) -> str:
        return hashlib.sha256(json.dumps(
            {"body": self.body, "subject": self.subject, "to": self.to.casefold()},
            sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def parse(raw: bytes) -> Received:
    # SMTP carries CRLF line ends; compare content in the sender's own line ends
    msg = email.message_from_bytes(raw.replace(b"\r\n", b"\n"),
                                   policy=email.policy.default)  # type: ignore[attr-defined]
    body = msg.get_content() if not msg.is_multipart() else ""
    if body.endswith("\n"):
        body = body[:-1]
    return Received(str(msg["Message-ID"]), str(msg["To"]), str(msg["Subject"]), body, raw)


@dataclass
class _Handler:
    messages: list[Received] = field(default_factory=list)
    reply: str | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.reply is not None:
            return self.reply
        received = parse(envelope.content)
        received.rcpts = list(envelope.rcpt_tos)
        self.messages.append(received)
        return "250 OK queued as atlas-test"


class Recorder:
    def __init__(self, port: int | None = None) -> None:
        self.handler = _Handler()
        self.port = port or free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def set_reply(self, reply: str | None) -> None:
        self.handler.reply = reply

    def start(self) -> Recorder:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


class DroppingServer:
    """Accepts the whole message, then drops the connection instead of answering.

    ``after_data="hang"`` keeps the connection open without answering instead (the
    client waits for its timeout); ``greet=False`` accepts connections but never says
    hello (the client waits in connect). ``accepted`` is set once a client connects."""

    def __init__(self, *, after_data: str = "drop", greet: bool = True) -> None:
        self.port = free_port()
        self.messages: list[Received] = []
        self.after_data, self.greet = after_data, greet
        self.accepted = threading.Event()
        self.stopped = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(5)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.running = True

    def start(self) -> DroppingServer:
        self.thread.start()
        return self

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.set()
            with conn:
                if not self.greet:
                    self.stopped.wait()
                    continue
                f = conn.makefile("rb")
                conn.sendall(b"220 drop.test ESMTP\r\n")
                data = b""
                in_data = False
                for line in f:
                    if in_data:
                        if line == b".\r\n":
                            self.messages.append(parse(data))
                            if self.after_data == "hang":
                                self.stopped.wait()
                            break  # close without answering
                        data += line[1:] if line.startswith(b"..") else line
                        continue
                    cmd = line.strip().upper()
                    if cmd.startswith((b"EHLO", b"HELO")):
                        conn.sendall(b"250 drop.test\r\n")
                    elif cmd.startswith(b"DATA"):
                        conn.sendall(b"354 go ahead\r\n")
                        in_data = True
                    elif cmd.startswith(b"QUIT"):
                        conn.sendall(b"221 bye\r\n")
                        break
                    else:
                        conn.sendall(b"250 OK\r\n")
                f.close()

    def stop(self) -> None:
        self.running = False
        self.stopped.set()
        self.sock.close()
