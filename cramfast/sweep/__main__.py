import sys

from cramfast.sweep.runner import main

sys.exit(main())
