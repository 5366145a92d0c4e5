import sys

from hparr.cli import main

sys.exit(main())
