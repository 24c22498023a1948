"""Sending one request to one of several candidate providers.

The middleware hands over the providers that serve the model, in configured order,
and gets back the one that answered with its response. Load balancing, failover,
retries and cool-down belong here, so the middleware stays plumbing.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from .errors import upstream_timeout, upstream_unreachable
from .providers.base import Provider, UpstreamRequest, UpstreamResponse


class Dispatcher:
    async def send(
        self,
        candidates: Sequence[Provider],
        request: UpstreamRequest,
        client: httpx.AsyncClient,
    ) -> tuple[Provider, UpstreamResponse]:
        provider = candidates[0]
        try:
            response = await provider.send(request, client)
        except httpx.TimeoutException:
            raise upstream_timeout(provider.name) from None
        except httpx.TransportError:
            raise upstream_unreachable(provider.name) from None
        return provider, response
