"""OpenAI-compatible HTTP server and the `tessera` command line."""
