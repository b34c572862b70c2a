"""The big email APIs' send routes, so their official SDKs work unchanged against
mailgate with one base-URL change (docs/vendors/). Each module only translates: the
vendor's request into Submissions for the one door (through `Send`'s seam: begin,
draft, prepare, commit), and the door's answer, or an ApiError, into the vendor's words.

    resend.py     /emails[/batch], GET /emails[/{id}], /emails/{id}/cancel       Bearer
    postmark.py   /email[/batch], /messages/outbound/{id}/details   X-Postmark-Server-Token
    sendgrid.py   /v3/mail/send, /v3/mail/batch[/{id}], /v3/user/scheduled_sends,
                  /v3/messages/{id}                                                Bearer
    mailgun.py    /v3/{domain}/messages[.mime]                            Basic api:<key>
"""

from __future__ import annotations

from fastapi import APIRouter

from mailgate.http.send import Send
from mailgate.http.vendors import mailgun, postmark, resend, sendgrid
from mailgate.store import Store

# The send routes: called straight from ASGI like mailgate's own (http/app.py Direct)
SENDS = frozenset(
    {
        "/emails",
        "/emails/batch",
        "/email",
        "/email/batch",
        "/v3/mail/send",
        "/v3/{domain}/messages",
        "/v3/{domain}/messages.mime",
    }
)


def routers(send: Send, store: Store) -> list[APIRouter]:
    return [m.router(send, store) for m in (resend, postmark, sendgrid, mailgun)]
