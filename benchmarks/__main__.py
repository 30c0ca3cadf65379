"""`python -m benchmarks`: run every benchmark and print one table (see benchmarks/run_all.py)."""

import sys

from benchmarks.run_all import main

sys.exit(main())
