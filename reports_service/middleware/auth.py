from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from falcon import WebSocketDisconnected
from falcon.asgi import Request, Response, WebSocket

from .. import transport
from ..access import Authenticator, Grant, InvalidToken, KeysUnavailable
from ..codes import Close
from ..errors import ServiceError, first_line
from ..limits import FailureThrottle, TokenRates
from ..logs import subject
from ..metrics import AUTH_FAILURES, count_close
from ..problems import problem
from ..protocol import AuthReply, first_message, identity, payload_type

logger = logging.getLogger("reports_service.auth")

POLICY = Close.POLICY_VIOLATION
BEARER = {"www-authenticate": "Bearer"}
STREAMS = frozenset({"/api/changes"})  # routes that may take the token as ?access_token=
INVALID_BEARER = {"www-authenticate": 'Bearer error="invalid_token"'}
FULL = "server full: too many connections"


class AuthMiddleware:
    """Authentication for the routes it protects, and only those: at the handshake with an
    ``Authorization: Bearer`` header, or else by the first message.

    A bad header refuses the handshake (HTTP 401). Without one, the connection is accepted
    and its first message must be a live token (or an ``auth`` request), sent within
    ``timeout`` seconds; otherwise it is closed with 1008 before the route runs. When
    ``full()``, a WebSocket is refused (HTTP 503, or 1013) before its token is looked at.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        protected: Iterable[str],
        *,
        timeout: float,
        throttle: FailureThrottle,
        rates: TokenRates | None = None,
        full: Callable[[], bool] | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._protected = frozenset(protected)
        self._timeout = timeout
        self._throttle = throttle
        self._rates = rates
        self._full = full

    async def process_resource(
        self, req: Request, resp: Response, resource: object, params: dict[str, Any]
    ) -> None:
        """HTTP: every protected route needs ``Authorization: Bearer`` (a stream of events may
        take ``?access_token=`` instead: a browser's EventSource cannot set headers)."""
        if req.uri_template not in self._protected or req.method == "OPTIONS":
            return
        address = req.remote_addr or "-"
        header = req.get_header("Authorization")
        token = req.get_param("access_token") if req.uri_template in STREAMS else None
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
            if not token:
                raise _unauthorized("use Authorization: Bearer <token>", BEARER)
        elif token is None:
            raise _unauthorized("this route needs Authorization: Bearer <token>", BEARER)
        if wait := self._throttle.blocked_for(address):
            AUTH_FAILURES.labels("throttled").inc()
            raise problem(
                429,
                "too many failed logins from this address",
                code="rate_limited",
                headers={"retry-after": str(max(1, math.ceil(wait)))},
            )
        try:
            grant = await self._authenticator.authenticate(token)
        except InvalidToken as error:
            self._throttle.failed(address)
            logger.info("login refused for %s: %s", address, error)
            AUTH_FAILURES.labels("invalid_token").inc()
            raise _unauthorized("invalid token", INVALID_BEARER) from None
        except (KeysUnavailable, ServiceError) as error:
            logger.warning("login not checked for %s: %s", address, first_line(error))
            AUTH_FAILURES.labels("unavailable").inc()
            raise problem(
                503,
                "the token cannot be checked now, retry later",
                code="unavailable",
                headers={"retry-after": "5"},
            ) from None
        req.context.grant = grant
        subject.set(grant.subject)
        if self._rates is not None and (wait := self._rates.check(grant.key)):
            raise problem(
                429,
                "too many requests for this token",
                code="rate_limited",
                headers={"retry-after": str(max(1, math.ceil(wait)))},
            )

    async def process_resource_ws(
        self, req: Request, ws: WebSocket, resource: object, params: dict[str, Any]
    ) -> None:
        # NOTE: this runs after routing, so a path with no route is refused by Falcon before
        #   anything is accepted (the tutorial accepted every path first).
        if req.uri_template not in self._protected:
            transport.handshake_done(ws)
            return
        header = req.get_header("Authorization")
        full = self._full is not None and self._full()
        if header is not None:
            if full:
                await self._deny(req, ws, 503, {"retry-after": "5"}, FULL, "full")
            await self._at_handshake(req, ws, header)
            return
        await ws.accept()
        if full:
            await self._reject(ws, req, Close.TRY_AGAIN_LATER, FULL, "full")
        address = req.remote_addr or "-"
        if self._throttle.blocked_for(address):
            await self._reject(ws, req, POLICY, "too many failed logins", "throttled")
        try:
            first = await asyncio.wait_for(ws.receive_media(), self._timeout)
        except TimeoutError:
            # NOTE: not a failed login: another client at the same address (one office behind
            #   one NAT) must not be locked out by one that never sends its token.
            await self._reject(ws, req, POLICY, "authentication timed out", "timeout")
        assert isinstance(first, str | bytes)
        token, request = first_message(first)
        try:
            if token is None:
                raise InvalidToken("the first message is not a token")
            grant = await self._authenticator.authenticate(token)
        except InvalidToken as error:
            self._throttle.failed(address)
            logger.info("login refused for %s: %s", address, error)
            await self._reject(ws, req, POLICY, "invalid token", "invalid_token")
        except (KeysUnavailable, ServiceError) as error:
            logger.warning("login not checked for %s: %s", address, first_line(error))
            reason = "service unavailable"
            await self._reject(ws, req, Close.TRY_AGAIN_LATER, reason, "unavailable")
        self._admit(req, grant)
        transport.handshake_done(ws)
        req.context.binary = isinstance(first, bytes)
        if request is not None:
            await ws.send_media(AuthReply(request.id, identity(grant)), payload_type(first))

    async def _at_handshake(self, req: Request, ws: WebSocket, header: str) -> None:
        address = req.remote_addr or "-"
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await self._deny(req, ws, 401, BEARER, "use Authorization: Bearer <token>", "invalid")
        if wait := self._throttle.blocked_for(address):
            retry = {"retry-after": str(max(1, round(wait)))}
            await self._deny(req, ws, 429, retry, "too many failed logins", "throttled")
        try:
            grant = await self._authenticator.authenticate(token.strip())
        except InvalidToken as error:
            self._throttle.failed(address)
            logger.info("login refused for %s: %s", address, error)
            await self._deny(req, ws, 401, INVALID_BEARER, "invalid token", "invalid_token")
        except (KeysUnavailable, ServiceError) as error:
            logger.warning("login not checked for %s: %s", address, first_line(error))
            retry = {"retry-after": "5"}
            await self._deny(req, ws, 503, retry, "service unavailable", "unavailable")
        self._admit(req, grant)
        transport.handshake_done(ws)
        await ws.accept()

    @staticmethod
    def _admit(req: Request, grant: Grant) -> None:
        req.context.grant = grant
        subject.set(grant.subject)
        expires = grant.expires_at.isoformat() if grant.expires_at else "never"
        logger.info(
            "authenticated %s as %r (%s, expires %s)",
            req.remote_addr,
            grant.subject,
            grant.kind,
            expires,
        )

    @staticmethod
    async def _deny(
        req: Request, ws: WebSocket, status: int, headers: dict[str, str], why: str, metric: str
    ) -> NoReturn:
        logger.info("refused the handshake of %s on %s: %s", req.remote_addr, req.path, why)
        AUTH_FAILURES.labels(metric).inc()
        await transport.deny(req, ws, status, headers, why)
        raise WebSocketDisconnected(POLICY)

    @staticmethod
    async def _reject(
        ws: WebSocket, req: Request, code: Close, reason: str, metric: str
    ) -> NoReturn:
        logger.info("refused %s on %s: %s", req.remote_addr, req.path, reason)
        AUTH_FAILURES.labels(metric).inc()
        count_close(code)
        await ws.close(code, reason)
        # NOTE: raising ends the request here, so the route's responder never runs.
        raise WebSocketDisconnected(code)


def _unauthorized(detail: str, headers: dict[str, str]) -> Exception:
    return problem(401, detail, code="invalid_token", headers=headers)
