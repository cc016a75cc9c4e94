"""``python -m ebmlens`` (and ``torchrun -m ebmlens``) runs the command line."""

from .cli import main

if __name__ == "__main__":
    main()
