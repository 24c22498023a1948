"""The app each process serves in the multi-process Redis tests.

Configured from the environment so that several processes can share one Redis:

- ASGI_AUTOPROXY_TEST_UPSTREAM: the fake upstream's base URL, ending in /v1; or
  ASGI_AUTOPROXY_TEST_UPSTREAMS: ``name=url,name=url`` for several providers (each with a
  key of its own, so callers are let in anonymously);
- ASGI_AUTOPROXY_TEST_REDIS: a redis:// (or redis+cluster://) URL;
- ASGI_AUTOPROXY_TEST_PREFIX: the cache's key prefix (``shared-test:``);
- ASGI_AUTOPROXY_TEST_RATE: ``requests_per_second,burst`` for a RateLimit;
- ASGI_AUTOPROXY_TEST_COOLDOWN: ``after_failures,seconds`` (the default Cooldown otherwise);
- ASGI_AUTOPROXY_TEST_TIMEOUT: seconds bounding each Redis command (0.1).
"""

from __future__ import annotations

import os
from typing import Any

from asgi_autoproxy import (
    AutoProxyMiddleware,
    CacheOptions,
    Cooldown,
    OpenAIProvider,
    RateLimit,
    RedisCache,
)
from tests.conftest import SERVER_KEY, inner_app

env = os.environ
options: dict[str, Any] = {}
if "ASGI_AUTOPROXY_TEST_UPSTREAMS" in env:
    named = [item.split("=", 1) for item in env["ASGI_AUTOPROXY_TEST_UPSTREAMS"].split(",")]
    providers = [OpenAIProvider(base_url=url, name=name, api_key=SERVER_KEY) for name, url in named]
    options["allow_anonymous"] = True
else:
    providers = [OpenAIProvider(base_url=env["ASGI_AUTOPROXY_TEST_UPSTREAM"], name="fake")]
if "ASGI_AUTOPROXY_TEST_RATE" in env:
    rate, burst = env["ASGI_AUTOPROXY_TEST_RATE"].split(",")
    options["rate_limit"] = RateLimit(requests_per_second=float(rate), burst=int(burst))
if "ASGI_AUTOPROXY_TEST_COOLDOWN" in env:
    after, seconds = env["ASGI_AUTOPROXY_TEST_COOLDOWN"].split(",")
    options["cooldown"] = Cooldown(after_failures=int(after), seconds=float(seconds))
timeout = float(env.get("ASGI_AUTOPROXY_TEST_TIMEOUT", "0.1"))

app = AutoProxyMiddleware(
    inner_app(),
    providers=providers,
    cache=RedisCache(
        url=env["ASGI_AUTOPROXY_TEST_REDIS"],
        prefix=env.get("ASGI_AUTOPROXY_TEST_PREFIX", "shared-test:"),
        timeout=timeout,
        retry_after=0.5,
    ),
    cache_options=CacheOptions(timeout=timeout),
    **options,
)
