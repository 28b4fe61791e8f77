"""Clients of remote services. Each reads responses in one place (``http.read_response``) into a
value or a typed error from ``bridge.errors``; retries (``http.retrying``) key on those types."""
