"""The web console: static files (HTML, CSS, ES modules) served under `/ui/`.

The pages reach the console only through its public API (`/api/v1/...`), with the API key the
user typed kept in `sessionStorage` and sent as `Authorization: Bearer`; see `routes.py` for
the headers every file is served with.
"""
