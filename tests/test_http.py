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


async def test_the_console_scripts_are_served_as_javascript(conductor: ASGIConductor) -> None:
    """Browsers run a module script (app.js, and client.js it imports) only with this type."""
    for path in ("/static/app.js", "/static/client.js"):
        result = await conductor.simulate_get(path)
        assert result.status_code == 200, path
        assert result.headers["content-type"].startswith("text/javascript"), path


async def test_unknown_path_is_404(conductor: ASGIConductor) -> None:
    assert (await conductor.simulate_get("/no-such-page")).status_code == 404
