import sys

from cramfast.study.runner import main

sys.exit(main())
