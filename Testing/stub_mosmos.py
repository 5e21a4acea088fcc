"""`mosmos` with the inference tests' stub network registered (inference_stub.py), for tests that need the command
in processes of its own (killed mid-run, several at once, under torchrun)."""

import sys

import inference_stub  # noqa: F401  registers the "test-threshold" architecture
from mosmos.cli import main

sys.exit(main())
