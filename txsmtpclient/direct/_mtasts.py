"""
SMTP MTA Strict Transport Security (RFC 8461), without I/O: the
``_mta-sts`` TXT record, the policy file, MX patterns, the policy cache, and
the TLSRPT-shaped (RFC 8460) account of what went wrong.

Sans-IO: text in, values or :class:`PolicyError` out; nothing here imports
Twisted.  :mod:`._fetch` brings the record and the policy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "MAX_AGE_LIMIT",
    "MAX_POLICY_SIZE",
    "Mode",
    "PolicyCache",
    "PolicyError",
    "STSPolicy",
    "TLSReportEntry",
    "mx_matches",
    "parse_policy",
    "parse_sts_record",
]

#: A policy file is at most 64 KiB (RFC 8461 section 3.3).
MAX_POLICY_SIZE = 64 * 1024
#: ``max_age`` is at most 31557600 seconds, about a year (section 3.2).
MAX_AGE_LIMIT = 31_557_600

_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class PolicyError(ValueError):
    """
    A TXT record or policy file that does not follow RFC 8461.
    """


class Mode(str, Enum):
    """
    What a policy asks of senders (RFC 8461 section 5).
    """

    #: Deliver only to matching MX hosts over verified TLS.
    ENFORCE = "enforce"
    #: Deliver as without a policy, and report what would have failed.
    TESTING = "testing"
    #: No MTA-STS: the domain withdraws its policy.
    NONE = "none"


@dataclass(frozen=True, slots=True)
class STSPolicy:
    """
    A domain's policy file.

    :ivar mode: enforce, testing or none.
    :ivar mx: the MX patterns (``mail.example.com``, ``*.example.net``).
    :ivar max_age: seconds the policy may be cached.
    """

    mode: Mode
    mx: tuple[str, ...]
    max_age: int

    def allows(self, host: str) -> bool:
        """
        Whether ``host`` is an MX the policy names.
        """
        return any(mx_matches(host, pattern) for pattern in self.mx)


@dataclass(frozen=True, slots=True)
class TLSReportEntry:
    """
    One failure in the shape of a TLSRPT report's ``failure-details``
    (RFC 8460 section 4.3); kept as data, not sent.

    :ivar policy_type: ``"sts"``, ``"tlsa"`` or ``"no-policy-found"``.
    :ivar policy_domain: the recipient domain.
    :ivar result_type: ``"sts-policy-fetch-error"``, ``"sts-policy-invalid"``,
        ``"validation-failure"``, ``"certificate-host-mismatch"``,
        ``"starttls-not-supported"`` ...
    :ivar receiving_mx_hostname: the MX host concerned, if any.
    :ivar failure_reason: the detail, for people.
    """

    policy_type: str
    policy_domain: str
    result_type: str
    receiving_mx_hostname: str | None = None
    failure_reason: str = ""

    def as_json(self) -> dict[str, str]:
        """
        The RFC 8460 JSON member names and values.
        """
        out = {
            "policy-type": self.policy_type,
            "policy-domain": self.policy_domain,
            "result-type": self.result_type,
        }
        if self.receiving_mx_hostname:
            out["receiving-mx-hostname"] = self.receiving_mx_hostname
        if self.failure_reason:
            out["failure-reason-code"] = self.failure_reason
        return out


def _fields(text: str, separator: str) -> list[tuple[str, str]]:
    pairs = []
    for part in text.split(separator):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=" if separator == ";" else ":")
        if not sep:
            raise PolicyError(f"{part!r} is not a key and a value")
        pairs.append((key.strip(), value.strip()))
    return pairs


def parse_sts_record(records: Sequence[str]) -> str | None:
    """
    The policy id from a domain's ``_mta-sts`` TXT records.

    :param records: each TXT record's strings joined.
    :returns: the id, or ``None`` when no record starts ``v=STSv1`` or when
        more than one does (section 3.1: then there is no policy).
    :raises PolicyError: for the one STS record with no valid ``id``.
    """
    sts = [r for r in records if r.replace(" ", "").startswith("v=STSv1")]
    if len(sts) != 1:
        return None
    found = dict(_fields(sts[0], ";"))
    record_id = found.get("id", "")
    if not _ID.match(record_id):
        raise PolicyError(f"the _mta-sts record's id {record_id!r} is not 1-32 letters/digits")
    return record_id


def parse_policy(body: bytes) -> STSPolicy:
    """
    Read a policy file (section 3.2): ``key: value`` lines, CRLF or LF.

    :raises PolicyError: when it is too large, not UTF-8, not ``STSv1``, or
        lacks a valid mode, max_age or (unless mode is none) an mx.
    """
    if len(body) > MAX_POLICY_SIZE:
        raise PolicyError(f"the policy is {len(body)} bytes, over {MAX_POLICY_SIZE}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"the policy is not UTF-8: {e}") from e
    version = mode = max_age = None
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"policy line {line!r} is not 'key: value'")
        key, value = key.strip(), value.strip()
        if key == "version":
            version = value
        elif key == "mode":
            mode = value
        elif key == "max_age":
            max_age = value
        elif key == "mx":
            mx.append(value.lower().rstrip("."))
        # Unknown keys are ignored (section 3.2).
    if version != "STSv1":
        raise PolicyError(f"policy version {version!r} is not STSv1")
    try:
        checked_mode = Mode(mode)
    except ValueError:
        raise PolicyError(f"policy mode {mode!r} is not enforce, testing or none") from None
    if max_age is None or not max_age.isdigit() or int(max_age) > MAX_AGE_LIMIT:
        raise PolicyError(f"policy max_age {max_age!r} is not 0 to {MAX_AGE_LIMIT}")
    if not mx and checked_mode is not Mode.NONE:
        raise PolicyError("the policy names no mx")
    return STSPolicy(checked_mode, tuple(mx), int(max_age))


def mx_matches(host: str, pattern: str) -> bool:
    """
    Whether an MX host name matches a policy's ``mx`` pattern: exactly, or a
    ``*.`` wildcard standing for one whole left-most label (section 4.1).
    """
    host = host.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


@dataclass(frozen=True, slots=True)
class _Cached:
    policy: STSPolicy
    record_id: str
    expires: float


class PolicyCache:
    """
    Policies by domain until their ``max_age`` (section 5.1), with the TXT id
    each was fetched under, so a changed id means a fresh fetch.

    :param limit: the most domains kept; the oldest entry goes first.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._entries: dict[str, _Cached] = {}

    def get(self, domain: str, now: float) -> tuple[STSPolicy, str] | None:
        """
        The unexpired policy for ``domain`` and its record id, or ``None``.
        """
        entry = self._entries.get(domain)
        if entry is None:
            return None
        if entry.expires <= now:
            del self._entries[domain]
            return None
        return entry.policy, entry.record_id

    def put(self, domain: str, policy: STSPolicy, record_id: str, now: float) -> None:
        """
        Keep ``policy`` for ``max_age`` seconds from ``now``.
        """
        self._entries.pop(domain, None)
        if len(self._entries) >= self._limit:
            del self._entries[next(iter(self._entries))]
        self._entries[domain] = _Cached(policy, record_id, now + policy.max_age)
