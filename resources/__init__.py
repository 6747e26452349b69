"""The app's resources as a package: `knn_explorer.resources` once installed (pyproject.toml maps
this folder there), found through importlib.resources by `knn_explorer/core/home.py`.

demo/     the embedded demo model, its adapters, documents and held-out text (see demo/README.md)
icons/    the application icon, SVG and PNGs (drawn by packaging/make_icon.py)
desktop/  the freedesktop launcher entry and AppStream metainfo (`knn-explorer install-desktop`)
"""
