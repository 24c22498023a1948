"""Each benchmark server says which event loop it really runs on.

``bench/run.py`` sets ``BENCH_LOOP_FILE`` per server; the server writes its running
loop's class there at start-up, and the report prints what the servers wrote. A
``--loop`` flag that never reached a server was how the proxies once ran uvloop in
runs labelled asyncio.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


def report_loop() -> None:
    path = os.environ.get("BENCH_LOOP_FILE")
    if path:
        loop_type = type(asyncio.get_running_loop())
        Path(path).write_text(f"{loop_type.__module__}.{loop_type.__qualname__}")
