"""
The service extensions a server lists in its EHLO reply (RFC 5321 section
4.1.1.1, RFC 1869), parsed into an immutable :class:`Extensions`.

Sans-IO; nothing here imports Twisted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["Extensions"]

# RFC 5321 section 4.1.1.1: ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


@dataclass(frozen=True, slots=True)
class Extensions(Mapping[str, str]):
    """
    The EHLO keywords a server advertised, lower-cased, each mapped to its
    parameters (``""`` when it has none), as smtplib's ``esmtp_features``.

    :ivar domain: what the server named itself on the reply's first line.
    """

    features: Mapping[str, str] = field(default_factory=dict)
    domain: str = ""

    @classmethod
    def from_ehlo(cls, message: bytes) -> Extensions:
        """
        Parse the message of a 250 reply to EHLO.

        Lines that are not extension keywords are skipped, as smtplib does.
        The obsolete ``AUTH=LOGIN PLAIN`` form (sent by old servers) is merged
        into ``auth``.
        """
        lines = message.decode("utf-8", "replace").split("\n")
        domain = lines[0].split(" ", 1)[0] if lines else ""
        features: dict[str, str] = {}
        for line in lines[1:]:
            if line[:5].upper() == "AUTH=":
                extra = line[5:].strip()
                features["auth"] = f"{features.get('auth', '')} {extra}".strip()
                continue
            match = _KEYWORD.match(line)
            if match is None:
                continue
            keyword = match.group().lower()
            params = line[match.end() :].strip()
            if keyword == "auth":
                params = f"{features.get('auth', '')} {params}".strip()
            features[keyword] = params
        return cls(features, domain)

    def __getitem__(self, name: str) -> str:
        return self.features[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.features

    def __iter__(self) -> Iterator[str]:
        return iter(self.features)

    def __len__(self) -> int:
        return len(self.features)

    def has(self, name: str) -> bool:
        """
        Whether ``name`` was advertised; case is ignored.
        """
        return name.lower() in self.features

    @property
    def size_limit(self) -> int | None:
        """
        The SIZE limit in bytes (RFC 1870); ``None`` when SIZE was not
        advertised or has no limit (``SIZE`` alone or ``SIZE 0``).
        """
        value = self.features.get("size")
        if not value:
            return None
        try:
            limit = int(value.split()[0])
        except ValueError:
            return None
        return limit or None

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        """
        The SASL mechanisms listed with AUTH, upper-cased.
        """
        return frozenset(self.features.get("auth", "").upper().split())
