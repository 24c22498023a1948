"""Which exceptions mean an upstream timed out or could not be reached.

httpx's, and httpx2's as well once something has imported httpx2 (an ``httpx2.AsyncClient``
passed as ``http_client=``, or a provider of the caller's own). An httpx2 error can only
be raised where httpx2 is loaded, so looking in ``sys.modules`` when an error arrives is
enough: the package never imports httpx2 itself. Use the calls in ``except`` clauses;
they run only when an exception is on its way.
"""

from __future__ import annotations

import sys

import httpx

_HTTPX_TIMEOUT: tuple[type[Exception], ...] = (httpx.TimeoutException,)
_HTTPX_TRANSPORT: tuple[type[Exception], ...] = (httpx.TransportError,)


def timeout_errors() -> tuple[type[Exception], ...]:
    """The upstream took too long (504): httpx's and httpx2's ``TimeoutException``."""
    httpx2 = sys.modules.get("httpx2")
    if httpx2 is None:
        return _HTTPX_TIMEOUT
    return (httpx.TimeoutException, httpx2.TimeoutException)


def transport_errors() -> tuple[type[Exception], ...]:
    """The upstream could not be reached or dropped the connection (502); includes the
    timeouts, so catch ``timeout_errors()`` first where the two differ."""
    httpx2 = sys.modules.get("httpx2")
    if httpx2 is None:
        return _HTTPX_TRANSPORT
    return (httpx.TransportError, httpx2.TransportError)
