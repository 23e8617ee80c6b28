"""`python -m tinyveo ...` is the `tinyveo` command."""
from flows.cli import main

raise SystemExit(main())
