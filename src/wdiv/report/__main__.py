import sys

from wdiv.report.cli import main

sys.exit(main())
