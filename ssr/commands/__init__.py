"""Subcommands of the ``ssr`` CLI; each module defines ``register(subparsers)``."""
