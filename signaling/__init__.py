"""Control plane of the consultation server: auth, waiting room, chat, protocol, HTTP API."""
