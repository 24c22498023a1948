"""Upstream providers: the protocol and the built-in implementations."""

from .base import Endpoint, Provider, UpstreamRequest, UpstreamResponse
from .openai import OpenAIProvider

__all__ = ["Endpoint", "OpenAIProvider", "Provider", "UpstreamRequest", "UpstreamResponse"]
