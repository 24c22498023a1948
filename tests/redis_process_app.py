"""The app one uvicorn process serves in the two-process Redis test.

Configured from the environment so that several processes can share one Redis:
ASGI_AUTOPROXY_TEST_UPSTREAM (the fake upstream's base URL, ending in /v1) and
ASGI_AUTOPROXY_TEST_REDIS (a redis:// URL).
"""

from __future__ import annotations

import os

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider, RedisCache
from tests.conftest import inner_app

app = AutoProxyMiddleware(
    inner_app(),
    providers=[OpenAIProvider(base_url=os.environ["ASGI_AUTOPROXY_TEST_UPSTREAM"], name="fake")],
    cache=RedisCache(url=os.environ["ASGI_AUTOPROXY_TEST_REDIS"], prefix="shared-test:"),
)
