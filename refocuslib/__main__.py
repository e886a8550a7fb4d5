"""``python -m refocuslib ...`` is the same as the ``refocuslib`` console script."""
from refocuslib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
