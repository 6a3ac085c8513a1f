"""`python -m resbench` runs the command line."""

from resbench.cli import main

main()
