"""Property: the orjson fast path and the stdlib read every JSON object the same way."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.delivery import parse_body

scalars = st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.text() | \
    st.floats(allow_nan=False, allow_infinity=False)
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                         max_leaves=20)


@given(st.dictionaries(st.text(), documents, max_size=6), st.booleans())
@settings(max_examples=300, deadline=None)
def test_fast_path_matches_the_stdlib(doc, pretty):
    raw = json.dumps(doc, indent=2 if pretty else None, ensure_ascii=pretty).encode()
    data, text = parse_body("application/json", raw)
    expected = json.loads(raw)
    # Integers past 64 bits come back as floats from orjson: the same value, read again exactly
    # where it matters (the contact ID, tested in test_delivery); the stored text is exact.
    assert text == raw.decode()
    assert _loose(data) == _loose(expected)


def _loose(value):
    if isinstance(value, dict):
        return {k: _loose(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_loose(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return float(value)
    return value


json_ish = st.text(alphabet=st.sampled_from(list('{}[]:,"\\ 0123456789.eE+-truefalsnNaI\u00e9\ud800')), max_size=40)


@given(st.one_of(st.binary(max_size=60), json_ish.map(lambda t: t.encode("utf-8", "surrogatepass"))))
@settings(max_examples=500, deadline=None)
def test_any_bytes_are_read_as_the_stdlib_reads_them(raw):
    """Whatever the bytes, the answer is the stdlib's: the same object when it reads one, a 400
    when it refuses them (orjson only ever speeds up the first case)."""
    from bridge.errors import BadDelivery

    try:
        expected = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        expected = None
    try:
        data, _ = parse_body("application/json", raw)
    except BadDelivery as err:
        assert err.status == 400 and (expected is None or not isinstance(expected, dict))
    else:
        if raw.strip():
            assert isinstance(expected, dict) and repr(_loose(data)) == repr(_loose(expected))
        else:
            assert data == {}
