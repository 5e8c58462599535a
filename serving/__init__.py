"""Model servers: one `ModelServer` protocol, an in-process and an Ollama implementation."""
