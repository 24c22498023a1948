"""Upstream providers: the protocol and the built-in implementations."""

from .anthropic import AnthropicProvider
from .azure import AzureOpenAIProvider
from .base import Endpoint, Provider, UpstreamRequest, UpstreamResponse
from .openai import OpenAIProvider

__all__ = [
    "AnthropicProvider",
    "AzureOpenAIProvider",
    "Endpoint",
    "OpenAIProvider",
    "Provider",
    "UpstreamRequest",
    "UpstreamResponse",
]
