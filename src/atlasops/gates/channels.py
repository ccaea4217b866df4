"""Channels: where email goes. SMTP (credentials from named environment variables)
and Maildir (a local folder; what the demo and dry runs use).

A send either returns the server's reply, or raises one of three failures that
decide what happens to the draft: temporary (retry with backoff), permanent
(failed, with the reason), or ambiguous (the server may have the message: never
re-sent without a human). Every error before the message is handed over is a
known not-sent failure; every unexplained error after that is ambiguous.

Under :func:`~atlasops.ops.process.stop_signals_interrupt`, a stop signal (Ctrl-C,
SIGTERM) cuts an SMTP send short only before the message is handed over (connecting,
the envelope): that is :class:`SendInterrupted`, known not sent. Once DATA has begun,
the signal waits for the server's answer (at most the channel's timeout), so the
outcome is known. Bcc headers are never written into the message itself.
"""

from __future__ import annotations

import copy
import email.policy
import os
import secrets
import smtplib
import socket
import ssl
import time
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Protocol

from ..config import Channel
from ..fsutil import PRIVATE, fsync_dir, write_synced
from ..ops.process import Interrupted, interruptible


class SendFailure(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TemporaryFailure(SendFailure):
    """Nothing was delivered; trying again later may work."""


class PermanentFailure(SendFailure):
    """Nothing was delivered; trying again will not help."""


class SendInterrupted(TemporaryFailure):
    """Nothing was delivered: a stop signal came before the message was handed over."""


class AmbiguousFailure(SendFailure):
    """The message may or may not have been accepted."""


class ChannelUnavailable(SendFailure):
    """The channel cannot be used at all right now (configuration, credentials)."""


def without_bcc(message: EmailMessage) -> EmailMessage:
    """The message as delivered: Bcc recipients get it, but never see the header."""
    if message.get("Bcc") is None:
        return message
    delivered = copy.deepcopy(message)
    del delivered["Bcc"]
    return delivered


def private_dirs(path: Path) -> None:
    """``path`` and any missing parent, each made 0700 (mail holds lead data)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=0o700, exist_ok=True)


class Sender(Protocol):
    name: str

    def check(self) -> None: ...

    def send(self, message: EmailMessage) -> str: ...


class MaildirSender:
    """Delivers the Maildir way (write into tmp/, rename into new/), each message 0600:
    it holds lead data."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path

    def check(self) -> None:
        return None

    def send(self, message: EmailMessage) -> str:
        try:
            data = without_bcc(message).as_bytes(policy=email.policy.default)
        except Exception as exc:
            raise PermanentFailure(f"the message cannot be written: {exc}") from exc
        key = (f"{time.time_ns()}.P{os.getpid()}R{secrets.token_hex(8)}."
               + socket.gethostname().replace("/", "-").replace(":", "-"))
        tmp, new = self.path / "tmp" / key, self.path / "new" / key
        try:
            for sub in ("tmp", "new", "cur"):
                private_dirs(self.path / sub)
            write_synced(tmp, data, PRIVATE, exclusive=True)
            os.rename(tmp, new)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TemporaryFailure(f"cannot write to the Maildir {self.path}: {exc}") from exc
        try:
            fsync_dir(new.parent)
        except OSError as exc:  # it is in new/ but may not survive a crash
            raise AmbiguousFailure(f"delivered to {new} but not made durable: {exc}") from exc
        return f"delivered to Maildir {self.path} as {key}"


class SmtpSender:
    def __init__(self, name: str, settings: Channel, env: Mapping[str, str]) -> None:
        self.name, self.s, self.env = name, settings, env

    def _credentials(self) -> tuple[str, str] | None:
        if not self.s.user_env and not self.s.password_env:
            return None
        missing = [v for v in (self.s.user_env, self.s.password_env)
                   if not v or not self.env.get(v)]
        if missing:
            raise ChannelUnavailable(
                f"channel {self.name}: SMTP credentials missing (environment variable(s) "
                f"{', '.join(str(m) for m in missing)} not set)")
        return self.env[str(self.s.user_env)], self.env[str(self.s.password_env)]

    def check(self) -> None:
        self._credentials()

    def send(self, message: EmailMessage) -> str:
        creds = self._credentials()
        data, sender, rcpts = _wire(message)
        smtp: smtplib.SMTP | None = None
        try:
            with interruptible():  # until DATA, a stop signal means: known not sent
                smtp = self._connect()
                self._envelope(smtp, creds, sender, rcpts)
        except Interrupted as exc:
            if smtp is not None:
                smtp.close()
            raise SendInterrupted(f"stopped by {exc.signame} before the message was "
                                  "handed over: not sent") from exc
        except BaseException:
            if smtp is not None:
                _quit(smtp)
            raise
        try:
            return self._data(smtp, data)
        finally:
            _quit(smtp)

    def _connect(self) -> smtplib.SMTP:
        host = str(self.s.host)
        try:
            if self.s.tls == "ssl":
                return smtplib.SMTP_SSL(host, self.s.port, timeout=self.s.timeout,
                                        context=ssl.create_default_context())
            return smtplib.SMTP(host, self.s.port, timeout=self.s.timeout)
        except Interrupted:
            raise
        except Exception as exc:  # nothing was handed over
            raise TemporaryFailure(f"cannot connect to {host}:{self.s.port}: {exc}") from exc

    def _envelope(self, smtp: smtplib.SMTP, creds: tuple[str, str] | None, sender: str,
                  rcpts: list[str]) -> None:
        """Everything before DATA: any failure here is a known not-sent one."""
        try:
            smtp.ehlo()
            if self.s.tls == "starttls":
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if creds is not None:
                smtp.login(*creds)
            code, resp = smtp.mail(sender)
            _raise_for(code, resp, "MAIL FROM")
            for rcpt in rcpts:
                code, resp = smtp.rcpt(rcpt)
                _raise_for(code, resp, "RCPT TO")
        except (SendFailure, Interrupted):
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentFailure(f"authentication refused: {exc.smtp_code} "
                                   f"{exc.smtp_error!r}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise TemporaryFailure(f"before the message was sent: {exc}") from exc
        except Exception as exc:  # nothing was handed over: known not sent
            raise PermanentFailure(f"before the message was sent: {type(exc).__name__}: "
                                   f"{exc}") from exc

    @staticmethod
    def _data(smtp: smtplib.SMTP, data: bytes) -> str:
        """From here on the server may have the message: failures are ambiguous unless
        the server answers with a clear refusal code."""
        try:
            code, resp = smtp.data(data)
        except smtplib.SMTPDataError as exc:
            _raise_for(exc.smtp_code, exc.smtp_error, "DATA")
            raise AmbiguousFailure(f"DATA answered {exc.smtp_code}") from exc
        except Exception as exc:
            raise AmbiguousFailure(f"connection lost during DATA: {exc}") from exc
        _raise_for(code, resp, "DATA")
        return f"{code} {resp.decode('utf-8', 'replace')}"


def _wire(message: EmailMessage) -> tuple[bytes, str, list[str]]:
    """(the bytes of DATA, without Bcc; the envelope sender; every recipient). Plain-ASCII
    SMTP: anything that cannot be said in it fails here, unsent."""
    try:
        rcpts = [a for _n, a in getaddresses(
            [str(v) for h in ("To", "Cc", "Bcc") for v in message.get_all(h, [])]) if a]
        data = without_bcc(message).as_bytes(policy=email.policy.SMTP)
        (_name, sender), = getaddresses([str(message["From"])])
        for address in (sender, *rcpts):
            address.encode("ascii")
    except Exception as exc:
        raise PermanentFailure(f"the message cannot be sent as plain-ASCII SMTP: "
                               f"{exc}") from exc
    return data, sender, rcpts


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _raise_for(code: int, resp: bytes | str, step: str) -> None:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    if 200 <= code < 400:
        return
    if 400 <= code < 500:
        raise TemporaryFailure(f"{step} refused temporarily: {code} {text}")
    raise PermanentFailure(f"{step} refused: {code} {text}")


def sender_for(name: str, settings: Channel, home: Path, env: Mapping[str, str]) -> Sender:
    if settings.type == "maildir":
        path = Path(str(settings.path))
        return MaildirSender(name, path if path.is_absolute() else home / path)
    return SmtpSender(name, settings, env)


__all__ = ["AmbiguousFailure", "ChannelUnavailable", "MaildirSender", "PermanentFailure",
           "SendFailure", "SendInterrupted", "Sender", "SmtpSender", "TemporaryFailure",
           "private_dirs", "sender_for", "without_bcc"]
