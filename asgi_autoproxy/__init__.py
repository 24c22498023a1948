"""asgi_autoproxy: an OpenAI-compatible LLM proxy endpoint inside any ASGI app."""

from .auth import Authenticate
from .cache.base import CacheBackend
from .cache.memory import MemoryCache, MemoryCacheStats
from .cache.policy import CacheDecision
from .cache.store import CacheStats
from .catalog import BUILTIN_CATALOG, ModelCatalog, ModelFlavor
from .errors import ProxyError
from .limits import RateLimit
from .middleware import AutoProxyMiddleware
from .openapi import openapi_document
from .providers import Endpoint, OpenAIProvider, Provider, UpstreamRequest, UpstreamResponse

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_CATALOG",
    "Authenticate",
    "AutoProxyMiddleware",
    "CacheBackend",
    "CacheDecision",
    "CacheStats",
    "Endpoint",
    "MemoryCache",
    "MemoryCacheStats",
    "ModelCatalog",
    "ModelFlavor",
    "OpenAIProvider",
    "Provider",
    "ProxyError",
    "RateLimit",
    "UpstreamRequest",
    "UpstreamResponse",
    "__version__",
    "openapi_document",
]
