"""python -m benchmarks: the full suite (see benchmarks/suite.py)."""
from benchmarks.suite import main

main()
