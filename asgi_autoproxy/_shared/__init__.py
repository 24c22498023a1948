"""State that several instances of the proxy share through one Redis (or keep per process).

``redis_link`` is the one connection every shared piece uses: the cache, rate, token and
spend limits, and provider health. Each piece falls back to per-process state while Redis
is unreachable, so Redis never fails a request.
"""
