"""Schemathesis against a live `reports-service serve`, with a write token: no server error, and
no response (status, content type, headers, body) that the OpenAPI document does not allow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from reports_service.openapi import build_document

from .conftest import WRITE_TOKEN
from .server import Server

MAX_EXAMPLES = 25

# NOTE: GET /api/changes is a stream that does not end while the server is up: a request for it
#   would return only at the client's timeout. Its errors are checked in test_openapi.py, the
#   stream itself by the SSE tests.
schema = schemathesis.openapi.from_dict(build_document()).exclude(path="/api/changes")

# NOTE: a body the document refuses may be refused for its size before it is read: content over
#   REPORTS_MAX_MESSAGE_BYTES gets 413, as documented.
_rejection = schema.config.checks.negative_data_rejection
_rejection.expected_statuses = [*_rejection.expected_statuses, "413"]

# NOTE: a request the document allows may rightly be refused for the state it finds: a cursor no
#   page handed out (400), `If-None-Match: *` for a report that exists (412). What it gets then
#   is still checked against the document by every other check.
NOT_CHECKED = [schemathesis.checks.positive_data_acceptance]


@pytest.fixture
def api_server(make_server: Callable[..., Server]) -> Server:
    # NOTE: no rate limit and no failed-login throttle: schemathesis also sends requests with a
    #   bad token (to see that they get 401), and a throttled address gets 429 for everything.
    return make_server(rate_limit="0", auth_failures="0")


# NOTE: one server per operation, kept across its examples (hence function_scoped_fixture): they
#   meet the reports the ones before them wrote, as a real client's requests would.
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_to_its_document(case: schemathesis.Case[Any], api_server: Server) -> None:
    case.call_and_validate(
        base_url=api_server.http,
        headers={"Authorization": f"Bearer {WRITE_TOKEN}"},
        excluded_checks=NOT_CHECKED,
    )
