"""drn.demo: `python -m drn.demo` (`make demo`; drn/demo/__main__.py says what it shows). The digits data
(digits), the narrow DRN-D-22 and its training (train), the three parts (parts), their pictures (sheets); the
trained weights are package data (drn/demo/assets/). Nothing of drn imports the demo."""
