"""One module per `mosmos` sub-command: ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``, each a thin
layer of argparse over the rest of the core (see mosmos.cli)."""
