"""Delivery: claim due recipients, resolve, send over SMTP, decide, record."""
