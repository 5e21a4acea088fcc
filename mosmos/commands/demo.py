"""`mosmos demo`: not yet available."""

HELP = "(not yet available)"


def add_arguments(parser) -> None:
    parser.add_argument("rest", nargs="*")


def run(args) -> int:
    print("mosmos demo: not yet available in this version", flush=True)
    return 2
