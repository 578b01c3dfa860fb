"""The default implementation of each lifecycle phase, one module per phase."""
