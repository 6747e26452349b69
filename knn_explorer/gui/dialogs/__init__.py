"""Dialogs: building a datastore, loading a model, training gates, repairing the catalog."""
