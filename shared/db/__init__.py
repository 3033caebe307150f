"""Database models and sessions: the source of truth for job and item state."""
