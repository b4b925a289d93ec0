"""Keep secrets (SAS URLs, S3 keys) out of logs, exceptions, the bundle and the printed result.

Two layers: every secret the workload reads is registered with :func:`register_secret` and replaced
wherever it appears (also URL-encoded), and patterns catch what was never registered: URL query
strings, SAS/signature parameters, connection-string keys and AWS access key ids.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse

__all__ = ["MASK", "RedactingFilter", "install_log_redaction", "redact", "redact_error", "register_secret"]

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Any URL's query string (a SAS token lives there): keep scheme, host and path.
    (re.compile(r"(?i)\b((?:https?|wss?)://[^\s?#'\"<>]*)\?[^\s#'\"<>]*"), rf"\1?{MASK}"),
    # Loose SAS / presigned parameters outside a URL.
    (
        re.compile(
            r"(?i)\b(sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|awsaccesskeyid"
            r"|skoid|sktid|skt|ske|sks|skv|skdutid)=([^&\s'\"]+)"
        ),
        rf"\1={MASK}",
    ),
    # Connection strings: AccountKey=...; SharedAccessSignature=...
    (re.compile(r"(?i)\b(accountkey|sharedaccesssignature|sharedaccesskey)=([^;\s'\"]+)"), rf"\1={MASK}"),
    # Key-value pairs that name a secret.
    (
        re.compile(
            r"(?i)\b(aws_secret_access_key|aws_access_key_id|aws_session_token|secret_access_key|secretaccesskey"
            r"|access_key_id|accesskeyid|password|token)(\s*[=:]\s*)(['\"]?)([^\s'\",;&]+)"
        ),
        rf"\1\2\3{MASK}",
    ),
    # AWS access key ids.
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{12,}\b"), MASK),
    # HTTP authorization headers.
    (re.compile(r"(?i)\b(authorization\s*[:=]\s*)(\S+(?: [^\s,;]+)?)"), rf"\1{MASK}"),
]


def register_secret(value: str | None) -> None:
    """Remember a secret (and its parts worth hiding) so :func:`redact` removes it wherever it appears."""
    if not value:
        return
    value = value.strip()
    candidates = {value}
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme and parsed.query:
        candidates.add(parsed.query)
        for _, param in urllib.parse.parse_qsl(parsed.query, keep_blank_values=False):
            if param and len(param) >= 8:
                candidates.add(param)
    with _lock:
        for item in candidates:
            if len(item) >= 4:
                _secrets.add(item)
                _secrets.add(urllib.parse.quote(item, safe=""))
                _secrets.add(urllib.parse.quote_plus(item))


def clear_secrets() -> None:
    """Forget registered secrets (tests)."""
    with _lock:
        _secrets.clear()


def redact(text: object) -> str:
    """``text`` with every registered secret and every secret-looking pattern masked."""
    out = str(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in out:
            out = out.replace(secret, MASK)
    for pattern, repl in _PATTERNS:
        out = pattern.sub(repl, out)
    return out


def redact_error(exc: BaseException) -> str:
    """``Type: message`` of an exception, redacted; never the traceback's local values."""
    message = str(exc) or repr(exc)
    return redact(f"{type(exc).__name__}: {message}")


class RedactingFilter(logging.Filter):
    """A logging filter that renders and redacts each record's message (and exception text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep the template only
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.exc_text = redact_error(exc)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Redact on every handler of ``logger`` (default: root), and quiet chatty SDK loggers."""
    target = logger or logging.getLogger()
    flt = RedactingFilter()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(flt)
    for name in ("azure", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.WARNING)
