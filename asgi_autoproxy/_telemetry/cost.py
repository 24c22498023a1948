"""What one request cost in dollars, from the catalog's prices and its token usage."""

from __future__ import annotations

from asgi_autoproxy._routing.catalog import ModelCatalog
from asgi_autoproxy.observability import RequestTrace


def request_cost(trace: RequestTrace, catalog: ModelCatalog) -> float | None:
    """0.0 for a hit or a follower (no upstream call was made for it); None where the
    model has no price or the upstream reported no usage (unknown, never free)."""
    if trace.cache == "HIT" or trace.cache == "COALESCED":
        return 0.0
    usage, model = trace.usage, trace.model
    if usage is None or model is None:
        return None
    # The answering model's own price first: a dated version may cost otherwise.
    price = None if trace.response_model is None else catalog.price(trace.response_model)
    if price is None:
        price = catalog.price(model)
    if price is None:
        return None
    return price.cost(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cached_input_tokens=usage.cached_input_tokens,
    )
