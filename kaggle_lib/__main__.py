"""`python -m kaggle_lib <command>`: the commands are in kaggle_lib.cli."""

import sys

from kaggle_lib.cli import main

if __name__ == "__main__":
    sys.exit(main())
