from __future__ import annotations

from falcon.testing import ASGIConductor


async def test_hello(conductor: ASGIConductor) -> None:
    result = await conductor.simulate_get("/hello")
    assert result.status_code == 200
    assert result.json == {"hello": "world"}


async def test_index_page_talks_to_echo(conductor: ASGIConductor) -> None:
    result = await conductor.simulate_get("/")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/html")
    assert "/echo" in result.text


async def test_unknown_path_is_404(conductor: ASGIConductor) -> None:
    assert (await conductor.simulate_get("/no-such-page")).status_code == 404
