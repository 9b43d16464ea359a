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

# The Autobahn|Testsuite run (tests/test_autobahn.py) needs `wstest`, which runs only on Python
# 2.7: installed with that Python's own pip into .venv-autobahn/ (ignored by git), exactly the
# hashed pins of requirements/autobahn-py27*.txt. Nothing is done when those files have not
# changed since the last install; without a Python 2.7 the test is skipped.
autobahn_dir=.venv-autobahn

python27() {
    local candidate
    for candidate in ${PYTHON27:-} /root/.pyenv/versions/2.7.18/bin/python python2.7 python2; do
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_autobahn() {
    local python stamp log
    if ! python=$(python27); then
        echo "scripts/test: no Python 2.7, the Autobahn|Testsuite run will be skipped" >&2
        return 0
    fi
    stamp=$({ echo "$python $PWD"; cat requirements/autobahn-py27*.txt; } | sha256sum | cut -d" " -f1)
    [ "$(cat "$autobahn_dir/installed" 2>/dev/null)" = "$stamp" ] && return 0
    echo "scripts/test: installing Autobahn|Testsuite (Python 2.7) into $autobahn_dir" >&2
    rm -rf "$autobahn_dir" && mkdir -p "$autobahn_dir/bin"
    log="$autobahn_dir/install.log"
    local pip=("$python" -m pip install --disable-pip-version-check --no-warn-script-location
        --require-hashes)
    # NOTE: --target, not a virtualenv: Python 2.7's own pip needs nothing more. The build tools
    #   go on PYTHONPATH as an absolute path, since pip builds each sdist in its own directory.
    if ! { "${pip[@]}" --target "$autobahn_dir/build" -r requirements/autobahn-py27-build.txt &&
        PYTHONPATH="$PWD/$autobahn_dir/build" "${pip[@]}" --no-build-isolation \
            --target "$autobahn_dir/lib" -r requirements/autobahn-py27.txt; } >"$log" 2>&1; then
        grep -v -e '^WARNING: ' -e '^DEPRECATION: ' "$log" | tail -n 20 >&2
        echo "scripts/test: installing Autobahn|Testsuite failed (all of it in $log)" >&2
        return 1
    fi
    # NOTE: addsitedir, not PYTHONPATH: zope.interface is a namespace package set up by a .pth.
    cat >"$autobahn_dir/bin/wstest" <<SH
#!/bin/sh
exec "$python" -c 'import site, sys; site.addsitedir(sys.argv.pop(1)); from autobahntestsuite.wstest import run; run()' "$PWD/$autobahn_dir/lib" "\$@"
SH
    chmod +x "$autobahn_dir/bin/wstest"
    "$autobahn_dir/bin/wstest" -a >/dev/null || return 1
    echo "$stamp" >"$autobahn_dir/installed"
}
