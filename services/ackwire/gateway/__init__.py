"""The edge gateway: holds client WebSockets and speaks for them on the bus."""
