"""Webhooks: Standard Webhooks signing, the address guard, events and their delivery."""
