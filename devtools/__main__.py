"""``python -m devtools``: the development command line."""

from devtools.cli import main

main()
