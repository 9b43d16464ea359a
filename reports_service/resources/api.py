"""The HTTP API's reports: GET, PUT and DELETE /api/reports/{name}, GET /api/reports."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import falcon
import msgspec
from falcon.asgi import Request, Response

from ..access import Grant
from ..problems import from_request_error, problem
from ..protocol import (
    ListReports,
    ReportIn,
    RequestError,
    Search,
    encode_text,
    refused,
    report_out,
)
from ..records import Report
from ..service import ReportService

T = TypeVar("T")

_decode_report = msgspec.json.Decoder(ReportIn).decode


def etag(version: int) -> str:
    return f'"{version}"'


def _grant(req: Request) -> Grant:
    grant: Grant = req.context.grant  # NOTE: set by AuthMiddleware on every /api route
    return grant


def _send_report(resp: Response, report: Report) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.text = encode_text(report_out(report))
    resp.etag = etag(report.version)


def _if_match(req: Request) -> int | None:
    """The version ``If-Match`` asks for; None without the header."""
    header = req.get_header("If-Match")
    if header is None:
        return None
    tags = [tag.strip() for tag in header.split(",")]
    if len(tags) != 1 or not _is_version_tag(tags[0]):
        raise problem(
            400, 'If-Match must be one ETag of this API, such as "12"', code="invalid_request"
        )
    return int(tags[0][1:-1])


def _is_version_tag(tag: str) -> bool:
    inner = tag[1:-1]
    # NOTE: at most 19 digits (a version is below 2**63): int() of over 4,300 raises ValueError
    return 2 < len(tag) <= 21 and tag[0] == tag[-1] == '"' and inner.isascii() and inner.isdigit()


class ReportResource:
    """One report by name: read it, write it (conditionally), remove it."""

    def __init__(self, service: ReportService, max_body_bytes: int) -> None:
        self._service = service
        self._max_body_bytes = max_body_bytes

    async def on_get(self, req: Request, resp: Response, name: str) -> None:
        report = await self._run(self._service.report(name, _grant(req)))
        if report is None:
            raise problem(404, f"no report named {name!r}", code="not_found")
        wanted = req.get_header("If-None-Match")
        # NOTE: compared weakly, as RFC 9110 says for If-None-Match
        tags = {t.strip().removeprefix("W/") for t in wanted.split(",")} if wanted else set()
        if etag(report.version) in tags or "*" in tags:
            resp.status = falcon.HTTP_304
            resp.etag = etag(report.version)
            return
        _send_report(resp, report)

    async def on_put(self, req: Request, resp: Response, name: str) -> None:
        body = _decode(await self._body(req))
        if_version = _if_match(req)
        if req.get_header("If-None-Match") is not None:
            if req.get_header("If-None-Match", default="").strip() != "*" or if_version is not None:
                raise problem(
                    400,
                    "a PUT takes If-None-Match: * alone, to create only",
                    code="invalid_request",
                )
            if_version = 0
        stored, created = await self._run(
            self._service.write(name, body.title, body.content, _grant(req), if_version=if_version)
        )
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        _send_report(resp, stored)

    async def on_delete(self, req: Request, resp: Response, name: str) -> None:
        await self._run(self._service.delete(name, _grant(req), if_version=_if_match(req)))
        resp.status = falcon.HTTP_204

    async def _body(self, req: Request) -> bytes:
        media = (req.content_type or "").split(";")[0].strip().lower()
        if media != falcon.MEDIA_JSON:
            raise problem(415, "send the report as application/json", code="invalid_request")
        limit = self._max_body_bytes
        if req.content_length is not None and req.content_length > limit:
            raise problem(413, f"the body is over {limit} bytes", code="invalid_request")
        data = await req.stream.read(limit + 1)
        if len(data) > limit:
            raise problem(413, f"the body is over {limit} bytes", code="invalid_request")
        return data

    @staticmethod
    async def _run(call: Awaitable[T]) -> T:
        try:
            return await call
        except RequestError as error:
            raise from_request_error(error) from None


def _decode(data: bytes) -> ReportIn:
    try:
        return _decode_report(data)
    except msgspec.ValidationError as error:
        raise problem(400, str(error), code="invalid_request") from None
    except (msgspec.DecodeError, RecursionError):
        raise problem(400, "the body is not valid JSON", code="invalid_request") from None


class ReportListResource:
    """GET /api/reports: a page of reports, newest change first, as ``list`` and ``search``."""

    def __init__(self, service: ReportService) -> None:
        self._service = service

    async def on_get(self, req: Request, resp: Response) -> None:
        params = dict(req.params)
        if any(not isinstance(value, str) for value in params.values()):
            raise problem(400, "each query parameter may be given once", code="invalid_request")
        if unknown := sorted(set(params) - {"limit", "cursor", "q"}):
            raise problem(400, f"unknown query parameter {unknown[0]!r}", code="invalid_request")
        kind: type[ListReports | Search] = Search if "q" in params else ListReports
        try:
            request = msgspec.convert(params, kind, strict=False)
        except msgspec.ValidationError as error:
            raise from_request_error(refused(error)) from None
        try:
            reply = await self._service.page(request, _grant(req))
        except RequestError as error:
            raise from_request_error(error) from None
        resp.content_type = falcon.MEDIA_JSON
        resp.text = encode_text(reply.result)
