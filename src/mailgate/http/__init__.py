"""The HTTP JSON API, by concern: app (assembly), auth, idempotency, send, messages,
health, errors, openapi, models."""
