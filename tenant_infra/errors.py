"""Errors a user can act on: shown as one line, never as a traceback."""

import os
import re
from collections.abc import Mapping
from typing import Final

#: Exit codes of every command: 1 failed (running again may succeed), 2 invalid input
#: (nothing ran). A sharded ``tenantctl migrate`` also exits 2 when running it again
#: is not worth it (README "The migration Job"), which an Indexed Job's
#: ``podFailurePolicy`` turns into ``FailIndex``.
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2


class InvalidInput(ValueError):
    """Input refused before anything is created. The message names the rule broken."""


class OperationFailed(RuntimeError):
    """A lifecycle operation failed on the servers; running it again resumes it."""


class BackendUnavailable(RuntimeError):
    """A platform service (PostgreSQL, RabbitMQ, Vault, MongoDB) could not be reached."""


_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@")
_KEY_VALUE = re.compile(r"(?i)\b(?P<key>password|passwd|pwd|token|secret)(?P<sep>\s*[=:]\s*)\S+")
_SECRET_VARIABLE = re.compile(r"PASSWORD|PASSPHRASE|TOKEN|SECRET|PRIVATE_KEY")


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with credentials replaced by ``[secret]``, before it is stored or shown.

    Reasons end up in stack tags (passed to the Pulumi CLI as arguments and kept in
    state) and in pull-request comments: URL userinfo, ``password=…`` pairs and the
    values of secret-looking environment variables never get there.
    """
    env = os.environ if environ is None else environ
    text = _URL_USERINFO.sub(r"\g<scheme>[secret]@", text)
    text = _KEY_VALUE.sub(r"\g<key>\g<sep>[secret]", text)
    for name, value in env.items():
        if len(value) >= 4 and _SECRET_VARIABLE.search(name) and value in text:
            text = text.replace(value, "[secret]")
    return text


def first_line(exc: BaseException) -> str:
    """An error's first line, scrubbed: a server's DETAIL line may quote a tenant's rows."""
    text = str(exc).strip()
    return scrub(text.splitlines()[0]) if text else type(exc).__name__
