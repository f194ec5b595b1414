"""
The checks on what a caller wants sent, shared by the client and the spool:
control characters in an argument, ESMTP parameters, DSN requests.

Light on purpose: nothing here imports Twisted or :mod:`smtplib`, so that
``txsmtp-sendmail`` can check an envelope before it queues it without
loading the client.  The checks raise :class:`ArgumentError`, a plain
``ValueError``; the client turns it into
:class:`~txsmtpclient.errors.SMTPArgumentError` (a subclass of it) at its
boundary, the spool into its ``EnvelopeError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["ArgumentError", "check_argument", "check_dsn", "check_options"]


class ArgumentError(ValueError):
    """
    A value given by the caller that cannot be sent as it is.
    """


# Every C0 control and DEL: CR and LF would end the command early and let an
# argument smuggle a second command (RFC 5321 section 4.1.1); NUL and the rest
# have no place in a command line either.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


def check_argument(value: str, what: str) -> str:
    """
    Check one command argument given by the caller.

    :param value: the argument.
    :param what: its name, for the error message.
    :returns: ``value`` unchanged.
    :raises TypeError: if ``value`` is not a ``str``.
    :raises ArgumentError: if it holds a control character (CR, LF, NUL,
        any other C0 control, or DEL).
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    match = _FORBIDDEN.search(value)
    if match is not None:
        raise ArgumentError(
            f"{what} holds the control character {match.group()!r} at offset "
            f"{match.start()}: {value!r}"
        )
    return value


def check_options(options: Iterable[str], what: str) -> tuple[str, ...]:
    """
    Check a sequence of ESMTP parameters (``KEYWORD`` or ``KEYWORD=value``,
    RFC 5321 section 4.1.2) given by the caller.

    :raises TypeError: if ``options`` is a bare string or holds non-strings.
    :raises ArgumentError: if one is empty, or holds a control character or
        a space.
    """
    if isinstance(options, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of str, not a single {type(options).__name__}")
    checked = tuple(options)
    for option in checked:
        check_argument(option, what)
        if " " in option or not option:
            raise ArgumentError(f"{what} entry {option!r} must be one non-empty word")
    return checked


_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def check_dsn(
    ret: str | None, envid: str | None, notify: str | Iterable[str] | None
) -> tuple[str | None, str | None, tuple[str, ...]]:
    """
    Check delivery status notification requests (RFC 3461).

    :param ret: ``"FULL"`` or ``"HDRS"`` (section 4.3), any case.
    :param envid: the envelope identifier (section 4.4), plain text.
    :param notify: ``"NEVER"``, or some of ``SUCCESS``, ``FAILURE``,
        ``DELAY`` (section 4.1), as a sequence or one comma-separated string.
    :returns: ``ret`` upper-cased, ``envid``, and the NOTIFY words
        upper-cased.
    :raises TypeError: for values that are not strings.
    :raises ArgumentError: for a RET other than FULL/HDRS, NOTIFY values
        other than SUCCESS/FAILURE/DELAY or NEVER alone, or an ENVID that is
        not printable ASCII of 1 to 100 characters.
    """
    if ret is not None:
        ret = check_argument(ret, "dsn_ret (DSN RET)").upper()
        if ret not in ("FULL", "HDRS"):
            raise ArgumentError(f'dsn_ret (DSN RET) must be "FULL" or "HDRS", not {ret!r}')
    if envid is not None:
        check_argument(envid, "dsn_envid (DSN ENVID)")
        if not envid.isascii() or not 0 < len(envid) <= 100:
            raise ArgumentError(
                "dsn_envid (DSN ENVID) must be 1 to 100 ASCII characters (RFC 3461)"
            )
    words: tuple[str, ...] = ()
    if notify:
        if isinstance(notify, str):
            notify = notify.split(",")
        words = tuple(check_argument(v, "dsn_notify (DSN NOTIFY)").strip().upper() for v in notify)
        if words != ("NEVER",) and not set(words) <= _NOTIFY:
            raise ArgumentError(
                "dsn_notify (DSN NOTIFY) must be some of SUCCESS, FAILURE, DELAY, "
                f"or NEVER alone; got {words!r}"
            )
    return ret, envid, words
