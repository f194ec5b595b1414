"""
TLS client options, made once per server name: building them loads the
system's trust roots, which is too slow to repeat for every connection.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import optionsForClientTLS

__all__ = ["TLSPolicy", "check_policy", "client_tls_options"]

#: ``"required"``: STARTTLS or fail, never plaintext; ``"opportunistic"``:
#: STARTTLS when offered; ``"never"``: stay in the clear.
TLSPolicy = Literal["required", "opportunistic", "never"]

_POLICIES = ("required", "opportunistic", "never")


def check_policy(policy: str) -> TLSPolicy:
    """
    :raises ValueError: for anything but the three policies.
    """
    if policy not in _POLICIES:
        raise ValueError(f"tls must be one of {_POLICIES}, not {policy!r}")
    return policy  # type: ignore[return-value]


@lru_cache(maxsize=128)
def client_tls_options(hostname: str) -> IOpenSSLClientConnectionCreator:
    """
    Options that verify the server's certificate chain against the system's
    trust roots and its name against ``hostname`` (service_identity).
    """
    return optionsForClientTLS(hostname)
