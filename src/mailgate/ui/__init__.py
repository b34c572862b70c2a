"""The web dashboard, served under /ui on the HTTP port: server-rendered pages (Jinja2
templates, one stylesheet, no script of its own, no build step), signed in with an
admin API key. docs/dashboard.md shows each page and the security model.

    routes.py    the /ui application: routes, static files, the headers of every answer
    gate.py      who may see a page (the session's key, re-read each time), POST checks
    session.py   the sealed session cookie and its CSRF token
    signin.py    sign in with an admin key (the API's own check and guard), sign out
    messages.py  search, one message, its HTML in a sandbox, retry now, cancel
    queue.py     waiting recipients by route
    keys.py      list, create (the secret shown once), revoke
    headers.py   Content-Security-Policy and friends, Server-Timing
    render.py    the templates and their filters
    apidocs.py   /docs: Swagger UI from mailgate's own pinned copy, no CDN
"""
