# Sourced by scripts/test: makes sure the local services the tests use are there and running.

pg_url_default="postgresql+asyncpg://postgres@127.0.0.1:5432/test"

chromium_bin=/usr/bin/chromium

pg_ready() { command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; }

ensure_postgres() {
    if [ "${REPORTS_TEST_POSTGRES:-1}" = "0" ]; then
        echo "scripts/test: REPORTS_TEST_POSTGRES=0, running on SQLite only" >&2
        return 0
    fi
    if ! pg_ready; then
        if ! command -v pg_ctlcluster >/dev/null; then
            echo "scripts/test: installing PostgreSQL" >&2
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        fi
        local version
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        for _ in $(seq 30); do pg_ready && break; sleep 1; done
    fi
    if ! pg_ready; then
        echo "scripts/test: PostgreSQL is not reachable on 127.0.0.1:5432" >&2
        return 1
    fi
    export REPORTS_TEST_POSTGRES_URL="${REPORTS_TEST_POSTGRES_URL:-$pg_url_default}"
    # A freshly installed server asks for a password on TCP; trust the loopback for tests, as
    # the project's machines do.
    if ! "${venv:-.venv}/bin/python" - <<'PY' 2>/dev/null
import asyncio, os, asyncpg
from sqlalchemy.engine import make_url
u = make_url(os.environ["REPORTS_TEST_POSTGRES_URL"])
async def main():
    c = await asyncpg.connect(host=u.host, port=u.port, user=u.username, password=u.password, database=u.database)
    await c.close()
asyncio.run(main())
PY
    then
        echo "scripts/test: cannot log in to PostgreSQL as $REPORTS_TEST_POSTGRES_URL; allowing trust on 127.0.0.1" >&2
        local hba
        hba=$(su postgres -c "psql -tAc 'SHOW hba_file'")
        sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
        su postgres -c "psql -qc 'SELECT pg_reload_conf()'" >/dev/null
        su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='test'\"" | grep -q 1 \
            || su postgres -c "createdb test"
    fi
}

# The browser tests (tests/test_browser.py) drive Debian's Chromium through Playwright, whose own
# browser download cannot work on the project's machines; the playwright package comes from the
# `test` extra.
ensure_chromium() {
    [ -x "$chromium_bin" ] && return 0
    echo "scripts/test: installing Chromium" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    if [ ! -x "$chromium_bin" ]; then
        echo "scripts/test: $chromium_bin is still missing after installing chromium" >&2
        return 1
    fi
}
