import sys

from bench.cli import main

if __name__ == "__main__":  # not when a spawned worker process imports this as __mp_main__
    sys.exit(main())
