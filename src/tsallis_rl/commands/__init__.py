"""Subcommands of `tsallis-rl`: each module defines `register(subparsers)`; cli.py discovers them."""
