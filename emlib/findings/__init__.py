"""One module per finding: its parameters, its run and its verdict rule."""
