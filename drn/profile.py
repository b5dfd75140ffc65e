"""`python -m drn.profile ...`: the entry point of drn.tools.profile (the per-layer profiler; its docstring says
what it prints). Nothing to import here: the program is drn.tools.profile."""
import sys

if __name__ == "__main__":
    from drn.tools.profile import main

    sys.exit(main())
