"""postmark's API on mailgate (being built)."""

from __future__ import annotations

from fastapi import APIRouter

from mailgate.http.send import Send
from mailgate.store import Store


def router(send: Send, store: Store) -> APIRouter:
    return APIRouter(include_in_schema=False)
