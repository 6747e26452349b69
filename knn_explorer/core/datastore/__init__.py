"""Datastores: reading documents, building and reading the folder format, the FAISS index, the catalog."""
