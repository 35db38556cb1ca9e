"""Sphinx configuration for speculum's Zuul documentation (make docs)."""

project = 'speculum'
copyright = 'speculum contributors'  # noqa: A001 (Sphinx's own name)
extensions = ['zuul_sphinx']
# zuul-sphinx finds zuul.d and roles/ two levels above this directory.
exclude_patterns = ['vars/*']
html_theme = 'alabaster'
html_static_path = []
