"""Platform adapters, one module per platform."""
