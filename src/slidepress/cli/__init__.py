"""Command line: thin wrappers that parse, call the pipeline and print."""
