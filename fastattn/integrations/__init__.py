"""Drop-in integrations with other libraries. Each submodule is imported explicitly, e.g.
``import fastattn.integrations.transformers``; none is imported with fastattn."""
