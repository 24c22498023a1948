"""asgi_autoproxy: an OpenAI-compatible LLM proxy endpoint inside any ASGI app."""

from .cache.redis import RedisCache  # imports redis only when a RedisCache is made
from .catalog import BUILTIN_CATALOG, ModelCatalog, ModelFlavor
from .errors import ProxyError
from .middleware import AutoProxyMiddleware
from .providers import Endpoint, OpenAIProvider, Provider, UpstreamRequest, UpstreamResponse

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_CATALOG",
    "AutoProxyMiddleware",
    "Endpoint",
    "ModelCatalog",
    "ModelFlavor",
    "OpenAIProvider",
    "Provider",
    "ProxyError",
    "RedisCache",
    "UpstreamRequest",
    "UpstreamResponse",
    "__version__",
]
