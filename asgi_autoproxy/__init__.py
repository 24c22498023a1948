"""asgi_autoproxy: an OpenAI-compatible LLM proxy endpoint inside any ASGI app."""

from .auth import Authenticate, client_keys_from_env
from .cache.base import CacheBackend, SharedLockBackend
from .cache.memory import MemoryCache, MemoryCacheStats
from .cache.policy import CacheDecision
from .cache.redis import RedisCache  # imports redis only when a RedisCache is made
from .cache.store import CacheStats
from .catalog import BUILTIN_CATALOG, ModelCatalog, ModelFlavor
from .dispatch import Cooldown, LoadBalancing, RetryPolicy
from .errors import ProxyError
from .heap import freeze_startup_heap
from .limits import RateLimit
from .middleware import AutoProxyMiddleware
from .observability import CacheStatus, RequestHook, RequestRecord, TokenUsage
from .openapi import openapi_document
from .providers import (
    AnthropicProvider,
    AzureOpenAIProvider,
    Endpoint,
    HTTPProvider,
    OpenAIProvider,
    Provider,
    UpstreamRequest,
    UpstreamResponse,
)

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_CATALOG",
    "AnthropicProvider",
    "Authenticate",
    "AutoProxyMiddleware",
    "AzureOpenAIProvider",
    "CacheBackend",
    "CacheDecision",
    "CacheStats",
    "CacheStatus",
    "Cooldown",
    "Endpoint",
    "HTTPProvider",
    "LoadBalancing",
    "MemoryCache",
    "MemoryCacheStats",
    "ModelCatalog",
    "ModelFlavor",
    "OpenAIProvider",
    "Provider",
    "ProxyError",
    "RateLimit",
    "RedisCache",
    "RequestHook",
    "RequestRecord",
    "RetryPolicy",
    "SharedLockBackend",
    "TokenUsage",
    "UpstreamRequest",
    "UpstreamResponse",
    "__version__",
    "client_keys_from_env",
    "freeze_startup_heap",
    "openapi_document",
]
