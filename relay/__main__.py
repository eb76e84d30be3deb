"""`python -m relay`: the same entry point as the `relay` console script."""

from relay.service.cli import main

raise SystemExit(main())
