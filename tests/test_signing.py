"""Request signing: published vectors, and how values are rendered for it."""

from __future__ import annotations

import hashlib

import pytest

from crawler import sign
from crawler._signing import format_value


@pytest.mark.parametrize(
    ("params", "private_key", "signature"),
    [
        ({"foo": "bar"}, "my_private_key", "634edc1bb957c0d65e5ab5494cf3b7784fbc87af"),
        (
            {"foo": "bar", "PublicKey": "my_public_key"},
            "my_private_key",
            "d4411ab30953fb0bbcb1e7313081f05e4e91a394",
        ),
        (
            {
                "Action": "DescribeUHostInstance",
                "Region": "cn-bj2",
                "Limit": 10,
                "PublicKey": "ucloudsomeone@example.com1296235120854146120",
            },
            "46f09bb9fab4f12dfc160dae12273d5332b5debe",
            "cba5cf5ec4d4233d206b1b54951e3787350a642f",
        ),
    ],
)
def test_published_vectors(
    params: dict[str, object], private_key: str, signature: str
) -> None:
    assert sign(params, private_key) == signature


def test_signature_is_sha1_of_sorted_pairs_then_key() -> None:
    params = {"b": "2", "a": "1", "C": "3"}
    # Upper case sorts before lower case: plain code-point order.
    expected = hashlib.sha1(b"C3a1b2secret").hexdigest()
    assert sign(params, "secret") == expected


def test_parameter_order_does_not_matter() -> None:
    forward = {"Action": "GetRepo", "Offset": 0, "Limit": 100, "Type": "private"}
    backward = dict(reversed(list(forward.items())))
    assert sign(forward, "k") == sign(backward, "k")


def test_signature_entry_is_ignored() -> None:
    params = {"foo": "bar"}
    signed = {**params, "Signature": "634edc1bb957c0d65e5ab5494cf3b7784fbc87af"}
    assert sign(signed, "my_private_key") == "634edc1bb957c0d65e5ab5494cf3b7784fbc87af"


def test_values_are_signed_raw_not_url_escaped() -> None:
    params = {"RepoName": "team+core&x=y", "ImageName": "img name/ü"}
    text = "ImageNameimg name/üRepoNameteam+core&x=ykey"
    assert sign(params, "key") == hashlib.sha1(text.encode("utf-8")).hexdigest()


def test_private_key_changes_the_signature() -> None:
    assert sign({"foo": "bar"}, "my_private_key") != sign({"foo": "bar"}, "other")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (-7, "-7"),
        (0, "0"),
        (42.0, "42"),
        (-3.0, "-3"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (1e-7, "0.0000001"),
        (1.5e-10, "0.00000000015"),
        (1e20, "100000000000000000000"),
        (1e16, "10000000000000000"),
        (123456789.125, "123456789.125"),
        ("text", "text"),
        ("", ""),
    ],
)
def test_value_rendering(value: object, text: str) -> None:
    assert format_value(value) == text


def test_rendered_values_are_what_gets_signed() -> None:
    typed = {"Limit": 10, "Flag": True, "Ratio": 42.0, "Tiny": 1e-7}
    textual = {"Limit": "10", "Flag": "true", "Ratio": "42", "Tiny": "0.0000001"}
    assert sign(typed, "k") == sign(textual, "k")
