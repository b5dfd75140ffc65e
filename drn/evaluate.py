"""`python -m drn.evaluate ...` (also under torchrun): the entry point of drn.apps.evaluate (`drn evaluate`; its
docstring says what it measures). Nothing to import here: the program is drn.apps.evaluate."""
import sys

if __name__ == "__main__":
    from drn.apps.evaluate import main

    sys.exit(main())
