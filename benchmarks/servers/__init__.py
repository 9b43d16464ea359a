"""The apps the benchmark serves besides the service itself, and the launcher for all of them."""

BARE_ECHO = "benchmarks.servers.bare_echo:app"
DICT_BASELINE = "benchmarks.servers.dict_baseline:app"
SERVICE = "reports_service.asgi:app"
BARE_BROADCAST = "benchmarks.servers.bare_broadcast:app"
