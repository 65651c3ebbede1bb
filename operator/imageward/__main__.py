import sys

from imageward import cli

sys.exit(cli.main())
