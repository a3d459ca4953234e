import sys

from ssr.cli import main

sys.exit(main())
