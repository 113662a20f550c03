"""Shipped model weights and their manifest (loaded with importlib.resources, never downloaded)."""
