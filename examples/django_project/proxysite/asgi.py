"""Run: cd examples/django_project && uvicorn proxysite.asgi:application --port 8000

Django's ASGI app wrapped by the proxy; the upstream is ``OPENAI_BASE_URL`` (default
https://api.openai.com/v1). Django sends no lifespan events; the proxy
makes its HTTP client on the first request, so nothing else is needed (and no
``--lifespan on``: Django refuses the lifespan scope). With ``OPENAI_API_KEY`` set the
proxy sends that key upstream, and callers must present one of the keys in
``AUTOPROXY_CLIENT_KEYS`` (comma-separated); without it, each caller's own
``Authorization: Bearer`` key is passed through. The middleware is built here, on
import, so a bad setting stops uvicorn at start-up with its message.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider, client_keys_from_env

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxysite.settings")

application = AutoProxyMiddleware(
    get_asgi_application(),
    # With a server-side key, only these callers may spend it: AUTOPROXY_CLIENT_KEYS.
    api_keys=client_keys_from_env(),
    providers=[
        OpenAIProvider(
            base_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
            api_key=os.environ.get("OPENAI_API_KEY"),  # None: pass the caller's key through
        )
    ],
)
