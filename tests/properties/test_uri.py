"""WebSocket URIs: built from parts, parsed back to the same parts; parsing is stable."""

from __future__ import annotations

import string
from urllib.parse import quote, unquote

from hypothesis import given
from hypothesis import strategies as st

from geventws.core.uri import parse_uri

from .strategies import checks

labels = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
hosts = st.one_of(
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda address: f"[{address.compressed}]"),
)
# Any text in path segments and the query, but the delimiters that would change them.
segments = st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="/?#%\r\n\t"), max_size=8), max_size=4
)
queries = st.one_of(
    st.none(), st.text(st.characters(codec="utf-8", exclude_characters="#%\r\n\t"), max_size=12)
)


@checks
@given(
    secure=st.booleans(),
    host=hosts,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=segments,
    query=queries,
    user=st.one_of(st.none(), st.tuples(st.text(max_size=6), st.text(max_size=6))),
)
def test_uri_parts_round_trip(
    *,
    secure: bool,
    host: str,
    port: int | None,
    path: list[str],
    query: str | None,
    user: tuple[str, str] | None,
) -> None:
    scheme = "wss" if secure else "ws"
    user_info = "" if user is None else f"{quote(user[0], safe='')}:{quote(user[1], safe='')}@"
    authority = user_info + host + ("" if port is None else f":{port}")
    resource = "/" + "/".join(path) + ("" if query is None else "?" + query)
    uri = parse_uri(f"{scheme}://{authority}{resource}")
    assert uri.secure is secure and uri.host == host.strip("[]")
    assert uri.port == (port if port is not None else 443 if secure else 80)
    # An empty query disappears; anything else comes back, percent-encoded as needed.
    assert unquote(uri.resource_name) == (resource if query else resource.rstrip("?"))
    assert uri.resource_name.isascii() and " " not in uri.resource_name
    assert uri.user_info == user
    # Parsing what it gives is stable.
    again = parse_uri(f"{scheme}://{authority}{uri.resource_name}")
    assert again == uri
