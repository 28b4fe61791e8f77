"""The JSON path language and the merge-field templates of connector descriptions."""

import pytest

from bridge.core.paths import PathError, first_path, get_path, split_path, walk_leaves
from bridge.core.templates import TemplateError, merge_fields, render, render_text

DOC = {
    "user": {"id": 7, "email": "a@example.com"},
    "tags": [{"id": 1, "name": "vip"}, {"id": 2, "name": "beta"}],
    "attributes": [{"name_std": "city", "value": "Oslo"}, {"name_std": "plan", "value": "pro"}],
    "meta": {"lookup_values": [{"field": "phone", "value": "+47"}, {"field": "email", "value": "j@x.io"}]},
}


def test_dotted_keys_and_indexes():
    """Object keys and list indexes are followed; a missing step gives the default."""
    assert get_path(DOC, "user.email") == "a@example.com"
    assert get_path(DOC, "tags.1.name") == "beta"
    assert get_path(DOC, "user.phone", "none") == "none"
    assert get_path(DOC, "tags.9.name") is None


def test_list_map_and_filter():
    """``[]`` maps over a list and ``[k=v]`` selects the first matching element."""
    assert get_path(DOC, "tags[].name") == ["vip", "beta"]
    assert get_path(DOC, "attributes[name_std=plan].value") == "pro"
    assert get_path(DOC, "meta.lookup_values[field=email].value") == "j@x.io"
    assert get_path(DOC, "attributes[name_std=zip].value") is None


def test_first_path_skips_empty_values():
    """The first path holding a non-empty value wins."""
    assert first_path({"a": "", "b": "x"}, ["a", "b"]) == ("b", "x")
    assert first_path({}, ["a"]) is None


@pytest.mark.parametrize("bad", ["", " a", "a[b", "a[x]", "a..b"])
def test_invalid_paths_are_refused(bad):
    """Malformed paths raise PathError instead of silently matching nothing."""
    with pytest.raises(PathError):
        split_path(bad)


def test_walk_leaves_lists_every_scalar():
    """Field discovery sees every leaf path."""
    leaves = dict(walk_leaves({"a": {"b": 1}, "c": [True, None], "d": []}))
    assert leaves == {"a.b": 1, "c.0": True, "c.1": None, "d": []}


def test_render_whole_field_keeps_type_and_text_interpolates():
    """A template that is exactly one field becomes the raw value; others are text."""
    values = {"email": "a+b@x.io", "attributes": {"pw": "s3"}, "secrets": {"token": "T"}}
    body = render({"users": [{"email": "{{email}}", "attributes": "{{attributes}}"}]}, values)
    assert body == {"users": [{"email": "a+b@x.io", "attributes": {"pw": "s3"}}]}
    assert render("Token {{secrets.token}}", values) == "Token T"
    assert render_text("/users/{{email}}/", values, url_quote=True) == "/users/a%2Bb%40x.io/"


def test_unknown_merge_field_is_an_error_naming_it():
    """A hole in a request template is never filled with an empty string."""
    with pytest.raises(TemplateError) as info:
        render("/hooks/{{webhook_id}}", {})
    assert "webhook_id" in str(info.value)
    assert merge_fields({"a": ["{{x}}", "{{y.z}}"]}) == {"x", "y.z"}
