"""HTTP errors as RFC 9457 problem details, and the last resort for errors nobody expected."""

from __future__ import annotations

import contextlib
import http
import logging
from typing import Any

import falcon
from falcon.asgi import Request, Response, WebSocket

from .protocol import ErrorCode, Problem, RequestError, encode_text

logger = logging.getLogger("reports_service.http")

PROBLEM_JSON = "application/problem+json"

# NOTE: the HTTP status of each error code a request can get (see protocol.ErrorCode).
STATUS_OF: dict[ErrorCode, int] = {
    "invalid_request": 400,
    "unknown_type": 400,
    "bad_cursor": 400,
    "not_found": 404,
    "forbidden": 403,
    "invalid_token": 401,
    "conflict": 412,
    "rate_limited": 429,
    "unavailable": 503,
    "internal": 500,
}


def problem(
    status: int,
    detail: str,
    *,
    code: ErrorCode | None = None,
    headers: dict[str, str] | None = None,
) -> falcon.HTTPError:
    """An error response: ``status``, its problem details, and ``headers``."""
    return falcon.HTTPError(status, description=detail, code=code, headers=headers)  # type: ignore[arg-type]


def from_request_error(error: RequestError) -> falcon.HTTPError:
    """The HTTP error for what the WebSocket protocol answers with an error reply."""
    headers = {"www-authenticate": "Bearer"} if error.code == "invalid_token" else None
    return problem(STATUS_OF[error.code], error.message, code=error.code, headers=headers)


def serialize(req: Request, resp: Response, error: falcon.HTTPError) -> None:
    """Every HTTP error as problem details (Falcon's error serializer)."""
    status = error.status_code
    headers = {k.lower(): v for k, v in dict(error.headers or {}).items()}
    retry = headers.get("retry-after")
    body = Problem(
        type="about:blank",
        title=http.HTTPStatus(status).phrase,
        status=status,
        detail=error.description or http.HTTPStatus(status).description,
        code=error.code,  # type: ignore[arg-type]
        retry_after=float(retry) if retry and retry.isdigit() else None,
    )
    resp.content_type = PROBLEM_JSON
    resp.text = encode_text(body)


async def unavailable(
    req: Request,
    resp: Response | None,
    error: Exception,
    params: dict[str, Any],
    ws: WebSocket | None = None,
) -> None:
    """A ServiceError (the database down) on an HTTP route: 503, retry later."""
    if resp is None:
        await last_resort(req, resp, error, params, ws)
        return
    logger.warning("request failed on %s %s: %s", req.method, req.path, error)
    resp.status = 503
    resp.set_header("Retry-After", "5")
    serialize(req, resp, problem(503, "database unavailable, retry later", code="unavailable"))


async def last_resort(
    req: Request,
    resp: Response | None,
    error: Exception,
    params: dict[str, Any],
    ws: WebSocket | None = None,
) -> None:
    """An error no route handled: logged in the service's own format, never shown."""
    logger.error("unhandled error on %s %s", req.method, req.path, exc_info=error)
    if resp is not None:
        resp.status = 500
        serialize(
            req, resp, problem(500, "the server failed to answer this request", code="internal")
        )
    if ws is not None:  # NOTE: as Falcon would, without its own traceback
        with contextlib.suppress(Exception):  # NOTE: the peer may be gone already
            await ws.close(1011)
