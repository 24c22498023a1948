"""Keep what start-up made out of the garbage collector's full passes.

A busy proxy allocates fast enough that Python's collector makes a full pass every
second or so, and a full pass walks every object the process holds: modules, the app,
the providers, the HTTP client. That pause (about 30 ms on the benchmark machine, see
bench/README.md) stalls every request in flight, so it sets the p99. ``gc.freeze()``
takes everything alive now out of the collector's walks; afterwards a full pass walks
only what requests made (about 5 ms there). It is a process-wide setting, so the
middleware never does it by itself: the CLI does, once start-up is done, and an app
that embeds the middleware can call ``freeze_startup_heap`` at the end of its own.
"""

from __future__ import annotations

import gc
import importlib

from asgi_autoproxy._http.clients import aiohttp_available


def freeze_startup_heap() -> None:
    """Collect once, then exempt every object alive now from later collections.

    Call it when start-up is over (the end of a lifespan startup). Objects made later
    are collected as usual; frozen ones are only freed if ``gc.unfreeze()`` is called.
    """
    if aiohttp_available():
        # Imported on the first proxied request otherwise: freeze its module objects too.
        importlib.import_module("asgi_autoproxy._http.transport")
    gc.collect()
    gc.freeze()
