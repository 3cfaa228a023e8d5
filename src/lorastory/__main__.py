"""``python -m lorastory`` runs the CLI."""

import sys

from lorastory.cli import main

sys.exit(main())
