"""Ray Data jobs and the `vitpose-batch` command line."""
