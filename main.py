"""Launch the kNN Explorer desktop app (same as `knn-explorer gui`)."""
import sys

from knn_explorer.gui.app import run

if __name__ == "__main__":
    sys.exit(run())
