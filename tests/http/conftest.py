"""The HTTP tests talk to the same in-process server (SMTP relay and HTTP API) as the
SMTP tests: its fixtures, shared."""

from tests.ingress.conftest import ca, server  # noqa: F401 (fixtures by name)
