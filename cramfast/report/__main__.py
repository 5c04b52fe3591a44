import sys

from cramfast.report.build import main

sys.exit(main())
