"""Channels: where email goes. SMTP (credentials from named environment variables)
and Maildir (a local folder; what the demo and dry runs use).

A send either returns the server's reply, or raises one of three failures that
decide what happens to the draft: temporary (retry with backoff), permanent
(failed, with the reason), or ambiguous (the server may have the message: never
re-sent without a human).
"""

from __future__ import annotations

import email.policy
import mailbox
import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from ..config import Channel


class SendFailure(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TemporaryFailure(SendFailure):
    """Nothing was delivered; trying again later may work."""


class PermanentFailure(SendFailure):
    """Nothing was delivered; trying again will not help."""


class AmbiguousFailure(SendFailure):
    """The message may or may not have been accepted."""


class ChannelUnavailable(SendFailure):
    """The channel cannot be used at all right now (configuration, credentials)."""


class Sender(Protocol):
    name: str

    def check(self) -> None: ...

    def send(self, message: EmailMessage) -> str: ...


class MaildirSender:
    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path

    def check(self) -> None:
        return None

    def send(self, message: EmailMessage) -> str:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            box = mailbox.Maildir(self.path, create=True)
            key = box.add(message)
        except OSError as exc:
            raise TemporaryFailure(f"cannot write to the Maildir {self.path}: {exc}") from exc
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
        host = str(self.s.host)
        try:
            if self.s.tls == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, self.s.port, timeout=self.s.timeout,
                                                      context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(host, self.s.port, timeout=self.s.timeout)
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryFailure(f"cannot connect to {host}:{self.s.port}: {exc}") from exc
        try:
            try:
                smtp.ehlo()
                if self.s.tls == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if creds is not None:
                    smtp.login(*creds)
                code, resp = smtp.mail(str(message["From"]))
                _raise_for(code, resp, "MAIL FROM")
                code, resp = smtp.rcpt(str(message["To"]))
                _raise_for(code, resp, "RCPT TO")
            except smtplib.SMTPAuthenticationError as exc:
                raise PermanentFailure(f"authentication refused: {exc.smtp_code} "
                                       f"{exc.smtp_error!r}") from exc
            except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
                if isinstance(exc, SendFailure):
                    raise
                raise TemporaryFailure(f"before the message was sent: {exc}") from exc
            # From here on the server may have the message: failures are ambiguous
            # unless the server answers with a clear refusal code.
            try:
                code, resp = smtp.data(message.as_bytes(policy=email.policy.SMTP))
            except smtplib.SMTPDataError as exc:
                _raise_for(exc.smtp_code, exc.smtp_error, "DATA")
                raise
            except (TimeoutError, smtplib.SMTPException, OSError) as exc:
                raise AmbiguousFailure(f"connection lost during DATA: {exc}") from exc
            _raise_for(code, resp, "DATA")
            return f"{code} {resp.decode('utf-8', 'replace')}"
        finally:
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
           "SendFailure", "Sender", "SmtpSender", "TemporaryFailure", "sender_for"]
