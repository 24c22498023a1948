"""Upstream providers: the protocol and the built-in implementations."""

from asgi_autoproxy.providers.anthropic import AnthropicProvider
from asgi_autoproxy.providers.azure import AzureOpenAIProvider
from asgi_autoproxy.providers.base import (
    Endpoint,
    HTTPProvider,
    Provider,
    UpstreamRequest,
    UpstreamResponse,
)
from asgi_autoproxy.providers.openai import OpenAIProvider

__all__ = [
    "AnthropicProvider",
    "AzureOpenAIProvider",
    "Endpoint",
    "HTTPProvider",
    "OpenAIProvider",
    "Provider",
    "UpstreamRequest",
    "UpstreamResponse",
]
