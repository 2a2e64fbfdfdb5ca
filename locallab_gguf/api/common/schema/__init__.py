"""Request bodies as their schema states them, and the OpenAPI document that states it."""
