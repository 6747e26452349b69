"""Training the small learned parts (gates) and keeping them as adapter files."""
