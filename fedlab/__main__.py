import sys

from fedlab.cli import main

sys.exit(main())
