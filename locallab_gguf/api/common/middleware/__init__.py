"""Middleware every route passes through: API keys and rate limits, the client's address,
the access log."""
