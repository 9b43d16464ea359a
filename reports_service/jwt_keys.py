"""JWT verification: HS256 with a shared secret, or keys from a JWKS file or URL, chosen by kid."""

from __future__ import annotations

from .access import Grant, InvalidToken
from .config import Settings


class JWTVerifier:
    """Checks JWTs against the configured keys (see :class:`reports_service.access.Verifier`)."""

    async def verify(self, token: str) -> Grant:
        raise InvalidToken("not implemented yet")


def verifier_for(settings: Settings) -> JWTVerifier | None:
    """The verifier the settings ask for, or None when no JWT keys are configured."""
    if not (settings.jwt_secret or settings.jwt_jwks):
        return None
    return JWTVerifier()
