"""The gateway: HTTP API, auth, characters, the job/image read model and SSE fan-out."""
