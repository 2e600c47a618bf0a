"""``irm serve``: an OpenAI-compatible server with per-request IRM routing."""
