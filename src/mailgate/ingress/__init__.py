"""The two doors a message comes in by (HTTP API, SMTP relay) and the one call they share."""
