"""Host-mode commands (see driver/host_cli.py): to be written."""


def register(subparsers) -> None:
    """Add this module's commands to the host-mode parser."""
