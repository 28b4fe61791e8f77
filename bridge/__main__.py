"""``python -m bridge`` is the same as the ``wp-sync-bridge`` command."""

from bridge.cli import main

if __name__ == "__main__":
    main()
