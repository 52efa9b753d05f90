"""One module per backend, each holding that backend's whole story."""
