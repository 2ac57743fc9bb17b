"""sys.exit(N) during setup: `ame run` exits N, with no error line.

    exits.py N
"""
import sys

from twisted.internet import reactor  # noqa: F401 (the ame reactor)

sys.exit(int(sys.argv[1]))
