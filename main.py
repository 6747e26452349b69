"""Launch kNN Explorer: with no arguments the desktop app (as `knn-explorer gui`), else any
`knn-explorer` command. The PyInstaller bundle starts here too (packaging/knn-explorer.spec)."""
import sys

from knn_explorer.cli import main

if __name__ == "__main__":
    sys.exit(main())
