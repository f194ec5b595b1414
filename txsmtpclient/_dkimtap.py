"""
DKIM in the daemon (``twist txsmtp --dkim-domain D --dkim-selector S
--dkim-key-file K``, repeatable, or ``--dkim-keys FILE`` for many): the
options, the keys read and checked at start-up, and the sender that signs
each message for its From domains as it is delivered.

Signing happens at delivery, not at enqueue: the spool keeps messages as
submitted, so after a key rotation (a restart with the new selector and key)
queued mail goes out signed with the new key.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import replace
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8
from email.utils import getaddresses
from typing import Any

import tomllib
from twisted.internet.defer import Deferred
from twisted.python import usage

from txsmtpclient._body import Body
from txsmtpclient.message import header_block
from txsmtpclient.reply import Reply
from txsmtpclient.transaction import Envelope

__all__ = ["DKIMOptions", "SigningSender", "dkim_keys", "signing_sender"]

_KEY_FIELDS = frozenset({"domain", "selector", "key-file", "canonicalization"})


class DKIMOptions:
    """
    The repeatable ``--dkim-*`` options, mixed into the daemon's
    :class:`~txsmtpclient.tap.Options`: the n-th domain, selector and key
    file go together.
    """

    def _dkim_list(self, name: str) -> list[str]:
        lists: dict[str, list[str]] = self.__dict__.setdefault("_dkim_lists", {})
        return lists.setdefault(name, [])

    def opt_dkim_domain(self, value: str) -> None:
        """A domain to sign mail From (d=); repeat with --dkim-selector and --dkim-key-file."""
        self._dkim_list("domain").append(value)

    def opt_dkim_selector(self, value: str) -> None:
        """The selector (s=) of the key for the --dkim-domain given in the same place."""
        self._dkim_list("selector").append(value)

    def opt_dkim_key_file(self, value: str) -> None:
        """A PEM private key (RSA 2048+ or Ed25519) for the matching --dkim-domain."""
        self._dkim_list("key-file").append(value)

    def dkim_triples(self) -> list[dict[str, str]]:
        """
        The command line's keys, paired in order.

        :raises usage.UsageError: when the three options are not given the
            same number of times.
        """
        domains = self._dkim_list("domain")
        selectors = self._dkim_list("selector")
        files = self._dkim_list("key-file")
        if not len(domains) == len(selectors) == len(files):
            raise usage.UsageError(
                "--dkim-domain, --dkim-selector and --dkim-key-file go together: give each "
                f"once per key (got {len(domains)}, {len(selectors)} and {len(files)})"
            )
        return [
            {"domain": d, "selector": s, "key-file": k}
            for d, s, k in zip(domains, selectors, files, strict=True)
        ]


def _read_keys_file(path: str) -> list[dict[str, str]]:
    """
    The ``[[key]]`` tables of a TOML file (or a JSON ``{"key": [...]}``).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise usage.UsageError(f"--dkim-keys: cannot read {path}: {e.strerror}") from None
    try:
        data: Any = (
            json.loads(raw.decode("utf-8"))
            if path.endswith(".json")
            else tomllib.loads(raw.decode("utf-8"))
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise usage.UsageError(f"--dkim-keys: cannot parse {path}: {e}") from None
    keys = data.get("key") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise usage.UsageError(f"--dkim-keys: {path} must hold [[key]] tables")
    result = []
    for number, key in enumerate(keys, 1):
        if not isinstance(key, dict):
            raise usage.UsageError(f"--dkim-keys: {path}: key {number} is not a table")
        fields = {str(k).replace("_", "-").lower(): v for k, v in key.items()}
        unknown = sorted(set(fields) - _KEY_FIELDS)
        missing = sorted({"domain", "selector", "key-file"} - set(fields))
        if unknown or missing or not all(isinstance(v, str) for v in fields.values()):
            raise usage.UsageError(
                f"--dkim-keys: {path}: key {number} needs domain, selector and key-file "
                f"(and may have canonicalization), as strings; unknown {unknown}, "
                f"missing {missing}"
            )
        result.append(fields)
    return result


def dkim_keys(options: Any, given: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    """
    Read and check every DKIM key the options name, at start-up.

    :param options: the parsed :class:`~txsmtpclient.tap.Options`.
    :param given: the option values merged with the config file's.
    :returns: signing domain (A-label, lower case) -> its signers.
    :raises usage.UsageError: a one-line message for a key that cannot be
        read or used (never the key itself), or options that do not pair.
    """
    wanted = options.dkim_triples() if isinstance(options, DKIMOptions) else []
    if given.get("dkim-keys"):
        wanted += _read_keys_file(str(given["dkim-keys"]))
    if not wanted:
        return {}
    try:
        from txsmtpclient.dkim import DKIMSigner
        from txsmtpclient.errors import DKIMError
    except ImportError as e:
        raise usage.UsageError(str(e)) from None
    keys: dict[str, list[Any]] = {}
    for key in wanted:
        try:
            signer = DKIMSigner.from_file(
                key["key-file"],
                domain=key["domain"],
                selector=key["selector"],
                canonicalization=key.get("canonicalization", "relaxed/relaxed"),
            )
        except DKIMError as e:
            raise usage.UsageError(f"--dkim-key-file: {e}") from None
        keys.setdefault(signer.domain, []).append(signer)
    return {domain: tuple(signers) for domain, signers in keys.items()}


def from_domains(message: bytes) -> list[str]:
    """
    The domains of a message's From addresses (A-labels, lower case), in
    order, each once.
    """
    parsed = BytesHeaderParser(policy=SMTPUTF8).parsebytes(header_block(message))
    domains: list[str] = []
    for _name, address in getaddresses([str(v) for v in parsed.get_all("From", [])]):
        domain = address.rpartition("@")[2].strip().rstrip(".")
        if not domain:
            continue
        try:
            domain = domain.encode("idna").decode("ascii").lower()
        except UnicodeError:
            continue
        if domain not in domains:
            domains.append(domain)
    return domains


class SigningSender:
    """
    Wraps the daemon's sender (the connection pool): each message is
    signed, as it is delivered, with the keys of every From domain that has
    any; other messages go unsigned.
    """

    def __init__(self, sender: Any, keys: Mapping[str, Sequence[Any]]) -> None:
        self._sender = sender
        self._keys = keys

    def signers_for(self, message: Body) -> tuple[Any, ...]:
        """
        The signers for a message: those of its From domains.
        """
        if not isinstance(message, bytes):
            return ()
        return tuple(s for d in from_domains(message) for s in self._keys.get(d, ()))

    def sendmail(self, *, msg: Body, envelope: Envelope) -> Deferred[dict[str, Reply]]:
        """
        Send as the wrapped sender does, the envelope carrying the message's
        signers (:class:`~txsmtpclient.spool.delivery.Sender`'s method).
        """
        if isinstance(msg, AsyncIterable):
            # A message streamed from the queue (PostgreSQL, in chunks): its
            # header block is in the first chunk.
            return Deferred.fromCoroutine(self._send_stream(msg, envelope))
        return self._send(msg, envelope, self.signers_for(msg))

    def _send(
        self, msg: Body, envelope: Envelope, signers: tuple[Any, ...]
    ) -> Deferred[dict[str, Reply]]:
        if signers:
            envelope = replace(envelope, dkim=signers)
        result: Deferred[dict[str, Reply]] = self._sender.sendmail(msg=msg, envelope=envelope)
        return result

    async def _send_stream(
        self, msg: AsyncIterable[bytes], envelope: Envelope
    ) -> dict[str, Reply]:
        chunks = aiter(msg)
        first = await anext(chunks, b"")

        async def whole() -> AsyncIterator[bytes]:
            yield first
            async for chunk in chunks:
                yield chunk

        return await self._send(whole(), envelope, self.signers_for(first))


def signing_sender(sender: Any, settings: Mapping[str, Any]) -> Any:
    """
    ``sender`` wrapped to sign when the settings hold DKIM keys, else itself.
    """
    keys = settings.get("dkim")
    return SigningSender(sender, keys) if keys else sender
