"""Run: cd examples/django_project && uvicorn proxysite.asgi:application --port 8000

Django's ASGI app wrapped by the proxy; the upstream is ``OPENAI_BASE_URL`` (default
https://api.openai.com/v1). Django sends no lifespan events; the proxy
makes its HTTP client on the first request, so nothing else is needed. With
``OPENAI_API_KEY`` set the proxy sends that key upstream; without it, each caller's
own ``Authorization: Bearer`` key is passed through.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxysite.settings")

# With a server-side key, only these callers may spend it: AUTOPROXY_CLIENT_KEYS="k1,k2".
client_keys = {
    key: f"client-{number}"
    for number, key in enumerate(os.environ.get("AUTOPROXY_CLIENT_KEYS", "").split(","))
    if key
}

application = AutoProxyMiddleware(
    get_asgi_application(),
    api_keys=client_keys or None,
    providers=[
        OpenAIProvider(
            base_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
            api_key=os.environ.get("OPENAI_API_KEY"),  # None: pass the caller's key through
        )
    ],
)
