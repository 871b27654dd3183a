"""One module per family of dataset layouts; hyperiqa.data.datasets holds the registry."""
