"""Route handlers, one module per surface of the API; each handler is a thin adapter."""
