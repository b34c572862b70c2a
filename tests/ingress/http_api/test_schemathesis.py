"""schemathesis against the running server's own /openapi.json: no 5xx, no response
outside the documented schema, with bounded examples per operation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import trustme
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.ingress.conftest import RunningServer, make_config, start_server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    ca = trustme.CA()
    yield from start_server(make_config(tmp, ca), ca)


def test_api_conforms_to_its_schema(live: RunningServer) -> None:
    # Driven by hand: schemathesis' pytest plugin does not load under pytest 9.
    schema = schemathesis.openapi.from_url(f"{live.http_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(
                base_url=live.http_url,
                headers={"Authorization": f"Bearer {live.send_key}"},
                checks=[
                    not_a_server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
            )

        check()
