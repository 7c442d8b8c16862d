"""The outbound allowlist, enforced in the transport so no request can go around it.

Every request the client's ``httpx.AsyncClient`` sends - FHIR calls, token requests, ``next``
links handed back by the server, redirects if anyone enabled them - passes through
:class:`AllowlistTransport` before the connection pool sees it. A URL whose ``host:port`` is
neither the configured Medplum base URL's nor on the explicit allowlist raises
:class:`OutboundHostNotAllowed` and no socket is opened.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from app.integrations.medplum.errors import OutboundHostNotAllowed

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _port_of(url: httpx.URL) -> int | None:
    return url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme)


class OutboundAllowlist:
    """``host:port`` pairs the service may call. An entry without a port (``medplum.example``)
    allows that host on the default port of the request's scheme."""

    def __init__(self, base_url: str, allowed_hosts: Iterable[str] = ()) -> None:
        base = httpx.URL(base_url)
        base_port = _port_of(base)
        if not base.host or base_port is None:
            raise ValueError("the Medplum base URL needs a host and an http(s) scheme")
        self._exact: set[tuple[str, int]] = {(base.host, base_port)}
        self._default_port_hosts: set[str] = set()
        for entry in allowed_hosts:
            self._add(entry)

    def _add(self, entry: str) -> None:
        text = entry.strip()
        if not text:
            return
        url = httpx.URL(text if "://" in text else f"http://{text}")
        if not url.host:
            raise ValueError("an allowed host entry has no host")
        explicit_port = url.port if "://" not in text else _port_of(url)
        if explicit_port is None:
            self._default_port_hosts.add(url.host)
        else:
            self._exact.add((url.host, explicit_port))

    def permits(self, url: httpx.URL) -> bool:
        if url.scheme not in _DEFAULT_PORTS or not url.host:
            return False
        port = _port_of(url)
        if port is None:
            return False
        if (url.host, port) in self._exact:
            return True
        return url.host in self._default_port_hosts and url.port is None

    def check(self, url: httpx.URL) -> None:
        if not self.permits(url):
            # host:port only: the path and query of a refused URL may carry search values.
            raise OutboundHostNotAllowed(
                f"outbound request to {url.host or '?'}:{_port_of(url) or '?'} is not allowed"
            )


class AllowlistTransport(httpx.AsyncBaseTransport):
    """Wraps the real transport; refuses disallowed URLs before delegating."""

    def __init__(self, allowlist: OutboundAllowlist, inner: httpx.AsyncBaseTransport) -> None:
        self._allowlist = allowlist
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._allowlist.check(request.url)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
