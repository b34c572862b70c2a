"""The vendor SDK tests talk to the same in-process server (SMTP relay and HTTP API) as
the SMTP and HTTP tests: its fixtures, shared. Each SDK is pointed at `server.http_url`."""

from tests.ingress.conftest import ca, server  # noqa: F401 (fixtures by name)
