"""`python -m rest.cli`: the `rest` console script."""

import sys

from rest.cli.main import main

sys.exit(main())
