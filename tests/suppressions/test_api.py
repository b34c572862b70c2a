"""The suppression list's API through the real server: add one or many (errors name the
field), list by reason and prefix with a cursor, remove, and who may change what."""

from __future__ import annotations

from mailgate import keys
from mailgate.models import Scope, Suppression, SuppressionReason
from tests.domains.conftest import Mail
from tests.suppressions.conftest import call, make_key


def test_add_list_page_and_remove(mail: Mail) -> None:
    key = make_key(mail, "app")
    many = [{"address": f"user{i:02}@list.test", "reason": "unsubscribe"} for i in range(25)]
    many.append({"address": "other@list.test", "reason": "complaint", "domain": "Brand.Test"})
    added = call(mail, key, "POST", "/v1/suppressions", json={"suppressions": many})
    assert added.status_code == 201, added.text
    assert len(added.json()["data"]) == 26

    pages, cursor = [], None
    while True:
        params = {"limit": 10, "prefix": "USER", **({"cursor": cursor} if cursor else {})}
        page = call(mail, key, "GET", "/v1/suppressions", params=params).json()
        pages.append([e["address"] for e in page["data"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    flat = [a for p in pages for a in p]
    assert flat == [f"user{i:02}@list.test" for i in range(25)], "in order, none skipped"
    assert [len(p) for p in pages] == [10, 10, 5]

    complaints = call(mail, key, "GET", "/v1/suppressions", params={"reason": "complaint"}).json()
    assert [(e["address"], e["domain"]) for e in complaints["data"]] == [
        ("other@list.test", "brand.test")
    ]
    # re-adding replaces the reason (the newest wins)
    again = call(mail, key, "POST", "/v1/suppressions", json={"address": "user00@list.test"})
    assert again.json()["data"][0]["reason"] == "manual"

    gone = call(mail, key, "DELETE", "/v1/suppressions/USER00@list.test")
    assert gone.status_code == 200 and gone.json() == {"address": "user00@list.test", "removed": 1}
    missing = call(mail, key, "DELETE", "/v1/suppressions/user00@list.test")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "address"
    wrong_scope = call(
        mail, key, "DELETE", "/v1/suppressions/other@list.test", params={"domain": "else.test"}
    )
    assert wrong_scope.status_code == 404
    scoped = call(
        mail, key, "DELETE", "/v1/suppressions/other@list.test", params={"domain": "brand.test"}
    )
    assert scoped.json()["removed"] == 1
    count = mail.server.call(lambda s: s.count_suppressions())
    assert count == 24


def test_bad_entries_are_refused_naming_the_field_and_nothing_is_added(mail: Mail) -> None:
    key = make_key(mail, "app")
    cases = [
        (
            {"suppressions": [{"address": "ok@list.test"}, {"address": "not an address"}]},
            "suppressions[1].address",
        ),
        (
            {"suppressions": [{"address": "ok@list.test", "reason": "bored"}]},
            "suppressions[0].reason",
        ),
        (
            {"suppressions": [{"address": "ok@list.test", "domain": "bad..domain"}]},
            "suppressions[0].domain",
        ),
        ({"address": "ok@list.test", "colour": "red"}, "colour"),
        ({"suppressions": []}, "suppressions"),
        ({"suppressions": [{"address": f"u{i}@list.test"} for i in range(1001)]}, "suppressions"),
    ]
    for body, field in cases:
        refused = call(mail, key, "POST", "/v1/suppressions", json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["error"]["field"] == field, refused.json()
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    not_json = mail.http.post("/v1/suppressions", content=b"{", headers=auth)
    assert not_json.status_code == 400, not_json.text
    bad_cursor = call(mail, key, "GET", "/v1/suppressions", params={"cursor": "nope"})
    assert bad_cursor.status_code == 422 and bad_cursor.json()["error"]["field"] == "cursor"
    assert mail.server.call(lambda s: s.count_suppressions()) == 0


def test_who_may_change_the_list(mail: Mail) -> None:
    mail.server.call(
        lambda s: s.put_suppressions(
            [Suppression("keep@list.test", SuppressionReason.HARD_BOUNCE, 1.0)]
        )
    )
    brand = make_key(mail, "brand", domains=("brand.test",))
    sandbox = make_key(mail, "sandbox", sandbox=True)
    reader = mail.server.call(lambda s: keys.create_key(s, "r", [Scope.READ]))[1]
    unscoped = {"address": "x@list.test"}
    assert call(mail, brand, "POST", "/v1/suppressions", json=unscoped).status_code == 403
    own = {"address": "x@list.test", "domain": "brand.test"}
    assert call(mail, brand, "POST", "/v1/suppressions", json=own).status_code == 201
    other = {"address": "x@list.test", "domain": "rival.test"}
    refused = call(mail, brand, "POST", "/v1/suppressions", json=other)
    assert refused.status_code == 403 and refused.json()["error"]["field"] == "domain"
    assert call(mail, brand, "DELETE", "/v1/suppressions/keep@list.test").status_code == 403
    assert call(mail, sandbox, "POST", "/v1/suppressions", json=unscoped).status_code == 403
    assert call(mail, sandbox, "DELETE", "/v1/suppressions/keep@list.test").status_code == 403
    assert call(mail, reader, "POST", "/v1/suppressions", json=unscoped).status_code == 403
    listed = call(mail, reader, "GET", "/v1/suppressions").json()["data"]
    assert {(e["address"], e["domain"]) for e in listed} == {
        ("keep@list.test", None),
        ("x@list.test", "brand.test"),
    }
    rival = {"address": "y@list.test", "domain": "rival.test"}
    assert call(mail, reader, "GET", "/v1/suppressions").status_code == 200
    mail.admin("POST", "/v1/suppressions", json=rival)
    seen_by_brand = call(mail, brand, "GET", "/v1/suppressions").json()["data"]
    assert {e["address"] for e in seen_by_brand} == {"keep@list.test", "x@list.test"}
