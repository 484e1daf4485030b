"""``python -m cli`` runs the ``ctvis`` command."""

import sys

from cli.main import main

sys.exit(main())
