"""asgi_autoproxy: an OpenAI-compatible LLM proxy endpoint inside any ASGI app."""

from .cache.base import CacheBackend
from .cache.memory import MemoryCache, MemoryCacheStats
from .cache.policy import CacheDecision
from .cache.store import CacheStats
from .catalog import BUILTIN_CATALOG, ModelCatalog, ModelFlavor
from .errors import ProxyError
from .middleware import AutoProxyMiddleware
from .observability import CacheStatus, RequestHook, RequestRecord, TokenUsage
from .providers import Endpoint, OpenAIProvider, Provider, UpstreamRequest, UpstreamResponse

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_CATALOG",
    "AutoProxyMiddleware",
    "CacheBackend",
    "CacheDecision",
    "CacheStats",
    "CacheStatus",
    "Endpoint",
    "MemoryCache",
    "MemoryCacheStats",
    "ModelCatalog",
    "ModelFlavor",
    "OpenAIProvider",
    "Provider",
    "ProxyError",
    "RequestHook",
    "RequestRecord",
    "TokenUsage",
    "UpstreamRequest",
    "UpstreamResponse",
    "__version__",
]
