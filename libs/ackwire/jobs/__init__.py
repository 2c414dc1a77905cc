"""Jobs: their life (the ledger, sans I/O) and their messages on the bus."""
