import sys

from cramfast.cli import main

sys.exit(main())
