"""
Direct delivery: mail sent straight to each recipient domain's mail hosts
(RFC 5321 section 5.1), as Postfix's smtp(8) does, instead of to a relay.
"""

from txsmtpclient.direct._deliver import DirectResult, send_direct

__all__ = ["DirectResult", "send_direct"]
