"""`python -m drn.demo` (`make demo`): runs drn.demo.main."""
import sys

from . import main

sys.exit(main())
