"""Access: API keys and the per-tenant rate limits."""
