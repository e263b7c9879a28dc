"""Pure ASGI pieces that the gateway and the runtime share: the per-step fast lane, and the frame
that carries a call's request id and watches its answer for the log lines."""
