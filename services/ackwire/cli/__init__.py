"""The `ackwire` command: run the stack or one service, and drive it."""
