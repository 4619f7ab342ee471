"""Running the broker as a service: systemd notify, metrics and health, reload, backup, inspect."""
