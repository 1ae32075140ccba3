"""``python3 -m clusterfw.cli``: the same as the ``clusterfw`` command."""
import sys

from clusterfw.cli import main

sys.exit(main())
