"""What happened, told outside: the outbox's events as public payloads (payloads.py),
read by the events API (http/events.py) and, next, by webhooks."""
