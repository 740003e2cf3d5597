"""`python -m reconciler` is `ray-gitops`."""
import sys

from .cli import main

sys.exit(main())
