"""Prices turn reported usage into dollars; unknown usage is never free."""

from __future__ import annotations

import pytest

from asgi_autoproxy._routing.pricing import Price


def test_cost_counts_input_output_and_cached_input_at_their_rates() -> None:
    price = Price(input=2.0, output=8.0, cached_input=0.5)
    cost = price.cost(input_tokens=1_000, output_tokens=500, cached_input_tokens=400)
    assert cost == pytest.approx((600 * 2.0 + 400 * 0.5 + 500 * 8.0) / 1_000_000)


def test_cached_tokens_cost_the_input_rate_when_no_cached_rate_is_published() -> None:
    price = Price(input=3.0, output=15.0)
    assert price.cost(input_tokens=10, output_tokens=0, cached_input_tokens=10) == pytest.approx(
        30 / 1_000_000
    )


def test_unknown_usage_has_no_cost() -> None:
    assert Price(input=1.0, output=1.0).cost(input_tokens=None, output_tokens=None) is None


def test_more_cached_tokens_than_input_tokens_are_capped() -> None:
    price = Price(input=1.0, output=0.0, cached_input=0.0)
    assert price.cost(input_tokens=5, output_tokens=0, cached_input_tokens=50) == 0.0
