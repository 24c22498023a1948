"""Upstream providers: the protocol and the built-in implementations."""

from .anthropic import AnthropicProvider
from .azure import AzureOpenAIProvider
from .base import Endpoint, HTTPProvider, Provider, UpstreamRequest, UpstreamResponse
from .openai import OpenAIProvider

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
