"""asgi_autoproxy: an OpenAI-compatible LLM proxy endpoint inside any ASGI app."""

from asgi_autoproxy._cache.backends.base import CacheBackend, SharedLockBackend
from asgi_autoproxy._cache.backends.memory import MemoryCache, MemoryCacheStats
from asgi_autoproxy._cache.backends.redis import (
    RedisCache,  # imports redis only when a RedisCache is made
)
from asgi_autoproxy._cache.policy import CacheDecision
from asgi_autoproxy._cache.store import CacheStats
from asgi_autoproxy._gate.auth import Authenticate, client_keys_from_env
from asgi_autoproxy._gate.budgets import SpendBudget, TokenLimit
from asgi_autoproxy._gate.limits import RateLimit
from asgi_autoproxy._heap import freeze_startup_heap
from asgi_autoproxy._routing.catalog import BUILTIN_CATALOG, ModelCatalog, ModelFlavor
from asgi_autoproxy._upstream.dispatch import Cooldown, LoadBalancing, RetryPolicy
from asgi_autoproxy.config import CacheOptions, Limits
from asgi_autoproxy.errors import ProxyError
from asgi_autoproxy.middleware import AutoProxyMiddleware
from asgi_autoproxy.observability import (
    Attempt,
    CacheStatus,
    RequestHook,
    RequestRecord,
    TokenUsage,
)
from asgi_autoproxy.openapi import openapi_document
from asgi_autoproxy.providers import (
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
    "Attempt",
    "Authenticate",
    "AutoProxyMiddleware",
    "AzureOpenAIProvider",
    "CacheBackend",
    "CacheDecision",
    "CacheOptions",
    "CacheStats",
    "CacheStatus",
    "Cooldown",
    "Endpoint",
    "HTTPProvider",
    "Limits",
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
    "SpendBudget",
    "TokenLimit",
    "TokenUsage",
    "UpstreamRequest",
    "UpstreamResponse",
    "__version__",
    "client_keys_from_env",
    "freeze_startup_heap",
    "openapi_document",
]
