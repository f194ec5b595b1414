"""
Direct delivery: mail sent straight to each recipient domain's mail hosts
(RFC 5321 section 5.1), as Postfix's smtp(8) does, instead of to a relay;
with MTA-STS (RFC 8461), DANE (RFC 7672), and their failures recorded in
the TLSRPT shape (RFC 8460).
"""

from txsmtpclient.direct._dane import TLSARecord
from txsmtpclient.direct._deliver import DestinationGate, DirectResult, send_direct
from txsmtpclient.direct._fetch import MTASTS, Discovery
from txsmtpclient.direct._gate import Backoff, Destinations
from txsmtpclient.direct._mtasts import Mode, PolicyCache, PolicyError, STSPolicy, TLSReportEntry
from txsmtpclient.direct._secure import DANE, DANEOptions
from txsmtpclient.direct._sender import DirectSender

__all__ = [
    "DANE",
    "MTASTS",
    "Backoff",
    "DANEOptions",
    "DestinationGate",
    "Destinations",
    "DirectResult",
    "DirectSender",
    "Discovery",
    "Mode",
    "PolicyCache",
    "PolicyError",
    "STSPolicy",
    "TLSARecord",
    "TLSReportEntry",
    "send_direct",
]
