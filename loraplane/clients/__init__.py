"""Clients of the systems loraplane talks to: the Kubernetes API, the runtime's internal API, the
artifact store. `core` holds no I/O; the components reach those systems through here."""
