"""The unprivileged launcher's side of the setuid switchboard helper: the client that
speaks its request protocol (client.py) and the JobCgroup whose directories it makes
(delegated.py). It sits above sandbox/cgroups, which it uses and which knows nothing
of it."""
