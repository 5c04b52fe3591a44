import sys

from cramfast.cli.compress import main

sys.exit(main())
