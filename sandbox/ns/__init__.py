"""One module per namespace: mount (the setup plan), pid (PID mapping)."""
