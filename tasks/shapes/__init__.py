"""The built-in data: captioned shapes rendered from a seed (`render`) and served on
127.0.0.1 as a URL list with its ground truth (`server`). Imports only the ground floor."""
