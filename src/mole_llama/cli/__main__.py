"""`python -m mole_llama.cli`."""

from . import main

if __name__ == "__main__":
    main()
