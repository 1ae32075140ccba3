import sys

from clusterfw.cli import main

sys.exit(main())
