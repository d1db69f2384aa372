"""``python -m energycrf`` runs the command-line interface."""

import sys

from energycrf.cli import main

sys.exit(main())
