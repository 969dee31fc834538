"""`python -m mole_llama.cli`."""

from . import main

main()
