"""`python -m reconciler` is `ray-gitops`."""
import sys

from .commands.cli import main

sys.exit(main())
