"""Message contracts (pydantic v2, no I/O) and the topic registry."""
