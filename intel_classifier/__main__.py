"""`python -m intel_classifier` is the `intel-classifier` command."""

from intel_classifier.cli import main

main()
