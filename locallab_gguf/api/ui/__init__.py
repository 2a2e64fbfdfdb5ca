"""The chat page: GET / and the files under /ui/, shipped in the package (no build step).

The page is a client of the public API like any other (`/v1/chat/completions`, `/v1/models`,
`/models/available`), so API keys, rate limits and metrics apply to its calls unchanged; only
its own files are open without a key and outside the rate limit.
"""
