"""`python -m vitpose_batch ...`: the `vitpose-batch` command."""

from vitpose_batch.cli import entry

entry()
