import sys

from ssjax.app.cli import main

sys.exit(main())
