from .cli import main

raise SystemExit(main(prog="reports-service"))
