"""asgi_autoproxy: an OpenAI-compatible LLM proxy endpoint inside any ASGI app."""

from .catalog import BUILTIN_CATALOG, ModelCatalog, ModelFlavor
from .dispatch import Cooldown, LoadBalancing, RetryPolicy
from .errors import ProxyError
from .middleware import AutoProxyMiddleware
from .providers import (
    AnthropicProvider,
    AzureOpenAIProvider,
    Endpoint,
    OpenAIProvider,
    Provider,
    UpstreamRequest,
    UpstreamResponse,
)

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_CATALOG",
    "AnthropicProvider",
    "AutoProxyMiddleware",
    "AzureOpenAIProvider",
    "Cooldown",
    "Endpoint",
    "LoadBalancing",
    "ModelCatalog",
    "ModelFlavor",
    "OpenAIProvider",
    "Provider",
    "ProxyError",
    "RetryPolicy",
    "UpstreamRequest",
    "UpstreamResponse",
    "__version__",
]
