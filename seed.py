"""Seed the tutorial's reports, or manage reports and tokens: `python seed.py --help`."""

from reports_service.cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="seed.py"))
