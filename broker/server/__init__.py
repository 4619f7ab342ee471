"""The asyncio edge: sockets, signals and timers around the sans-I/O core."""
