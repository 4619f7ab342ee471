"""Bridges to upstream brokers: a persistent local session is the store-and-forward backlog."""
