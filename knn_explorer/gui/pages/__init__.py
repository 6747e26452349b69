"""The main window's pages: Evaluate, Side by side, and the Library (Explore is the main window's own)."""
