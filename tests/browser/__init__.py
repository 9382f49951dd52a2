"""Real-browser tests: JupyterLab from the venv driven by Debian's Chromium through Playwright (marker ``browser``)."""
