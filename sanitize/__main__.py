"""``python -m sanitize``: the same door as the ``sanitize`` console script."""

from sanitize.entry import main

if __name__ == "__main__":
    main()
