"""The one country decision: ``Policy.region_for`` over every ISO 3166-1 alpha-2 code, the
reservations and aliases in real use, and any spelling of them.

The expectations come from the policy's own lists (a code a restricted region lists is that
region; any other ISO code is OTHER) and from Debian's ``iso-codes`` data where the machine has
it, so that the embedded code list is checked against an independent copy.
"""

from __future__ import annotations

import copy
import json
import string
import unicodedata
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.countries import ALIASES, ISO_3166_1_ALPHA2, normalise_country
from schemas.policy import (
    OTHER_REGION,
    UNKNOWN_REGION,
    default_policy_path,
    load_policy,
    parse_policy,
)

POLICY = load_policy()
LISTED = {code: region.name for region in POLICY.regions.values() for code in region.countries}
RESTRICTED = frozenset(LISTED) - {c for c, r in LISTED.items() if r == OTHER_REGION}
ISO_CODES_JSON = Path("/usr/share/iso-codes/json/iso_3166-1.json")


def expected_region(code: str) -> str:
    return LISTED.get(code, OTHER_REGION)


@pytest.mark.parametrize("code", sorted(ISO_3166_1_ALPHA2))
def test_every_iso_code_has_the_region_the_policy_lists(code):
    assert POLICY.region_for(code) == expected_region(code)
    assert POLICY.country_code(code) == code


def test_the_embedded_list_is_iso_3166_1():
    assert len(ISO_3166_1_ALPHA2) == 249
    assert {"GB", "GR", "FR", "DE", "US", "SS", "XK"} & ISO_3166_1_ALPHA2 == {
        "GB",
        "GR",
        "FR",
        "DE",
        "US",
        "SS",
    }
    if not ISO_CODES_JSON.exists():
        pytest.skip("Debian's iso-codes is not installed")
    entries = json.loads(ISO_CODES_JSON.read_text(encoding="utf-8"))["3166-1"]
    assert {e["alpha_2"] for e in entries} == ISO_3166_1_ALPHA2


def test_the_policy_restricts_eea_uk_and_eu():
    assert {"GB", "GR", "FR", "DE", "IS", "LI", "NO", "EU"} <= RESTRICTED
    assert POLICY.region_for("EU") == "EEA_UK"
    assert POLICY.country_code("EU") == "EU"


@pytest.mark.parametrize(
    ("alias", "code"),
    [
        ("UK", "GB"),  # exceptionally reserved at the request of the United Kingdom (.uk)
        ("XI", "GB"),  # Northern Ireland in UK and EU customs and VAT (EORI, VAT numbers)
        ("EL", "GR"),  # Greece in EU usage (Interinstitutional Style Guide, VAT numbers)
        ("FX", "FR"),  # metropolitan France (exceptionally reserved, formerly assigned)
        ("EA", "ES"),  # Ceuta and Melilla (exceptionally reserved for the WCO)
        ("IC", "ES"),  # the Canary Islands (exceptionally reserved for the WCO)
        ("EZ", "EU"),  # the eurozone (exceptionally reserved)
        ("EW", "EE"),  # Estonia (indeterminately reserved: vehicle code)
        ("FL", "LI"),  # Liechtenstein (indeterminately reserved: vehicle code)
        ("SF", "FI"),  # Finland (indeterminately reserved: vehicle code)
    ],
)
def test_aliases_in_real_use_take_the_region_of_their_country(alias, code):
    assert ALIASES[alias] == code
    assert POLICY.region_for(alias) == POLICY.region_for(code) == "EEA_UK"
    assert POLICY.country_code(alias) == code


def test_every_alias_names_a_restricted_code():
    """Aliases only ever make a value more restricted than UNKNOWN's label: each one names a
    code a restricted region lists, and no alias is itself an ISO code."""
    assert not set(ALIASES) & ISO_3166_1_ALPHA2
    assert set(ALIASES.values()) <= RESTRICTED


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "  ",
        "ZZ",  # "unknown" in the bundled database and many others
        "XX",
        "AP",  # MaxMind's "Asia/Pacific"
        "A1",  # anonymous proxy
        "A2",  # satellite provider
        "O1",  # "other"
        "T1",  # Tor (Cloudflare)
        "XK",  # Kosovo: user-assigned, not ISO
        "AA",
        "QM",
        "CS",  # Serbia and Montenegro, or Czechoslovakia: not one country
        "SU",  # the USSR
        "YU",  # Yugoslavia
        "AN",  # the Netherlands Antilles
        "DG",  # Diego Garcia: reserved, not a country of its own
        "GBR",  # alpha-3
        "G",
        "Germany",
        "U.S.",
        "1",
        "D\u0301E",  # a combining mark does not compose into a letter of a code
        42,
        b"DE",
        ["DE"],
    ],
)
def test_what_is_not_a_country_is_unknown(value):
    assert POLICY.region_for(value) == UNKNOWN_REGION
    assert POLICY.country_code(value) is None


@pytest.mark.parametrize(
    ("value", "region"),
    [
        (" gb ", "EEA_UK"),
        ("gb\n", "EEA_UK"),
        ("\u00a0De\u3000", "EEA_UK"),  # no-break and ideographic spaces
        ("\uff27\uff22", "EEA_UK"),  # fullwidth GB
        ("\uff55\uff4b", "EEA_UK"),  # fullwidth uk
        ("el", "EEA_UK"),
        (" us ", OTHER_REGION),
        ("\uff35\uff33", OTHER_REGION),  # fullwidth US
        ("ch", OTHER_REGION),
    ],
)
def test_spellings_are_normalised(value, region):
    assert POLICY.region_for(value) == region


# -- properties ----------------------------------------------------------------------------------

SPACES = st.sampled_from(["", " ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "  \r\n"])


def _fullwidth(ch: str) -> str:
    return chr(ord(ch.upper()) - ord("A") + 0xFF21)


def _math_bold(ch: str) -> str:
    return chr(ord(ch.upper()) - ord("A") + 0x1D400)  # NFKC folds it back to the letter


LETTER_FORMS = st.sampled_from([str.upper, str.lower, _fullwidth, _math_bold])


@st.composite
def spellings(draw, codes):
    """A spelling of one of ``codes``: each letter upper, lower, fullwidth or mathematical
    bold, inside any mix of whitespace."""
    code = draw(st.sampled_from(sorted(codes)))
    letters = "".join(draw(LETTER_FORMS)(ch) for ch in code)
    return code, draw(SPACES) + letters + draw(SPACES)


RESTRICTED_SPELLINGS = sorted(RESTRICTED | {a for a, c in ALIASES.items() if c in RESTRICTED})


@settings(max_examples=500)
@given(spellings(RESTRICTED_SPELLINGS))
def test_no_spelling_of_a_restricted_code_is_other(drawn):
    code, spelling = drawn
    assert POLICY.region_for(spelling) != OTHER_REGION, (code, spelling)
    assert POLICY.region_for(spelling) == POLICY.region_for(code)


@settings(max_examples=300)
@given(spellings(ISO_3166_1_ALPHA2))
def test_every_spelling_of_an_iso_code_is_that_code(drawn):
    code, spelling = drawn
    assert normalise_country(spelling) == code
    assert POLICY.region_for(spelling) == expected_region(code)


ASCII_PAIRS = st.text(alphabet=string.ascii_letters + string.digits + " ._-", max_size=4)


@settings(max_examples=1000)
@given(st.one_of(st.text(max_size=6), ASCII_PAIRS, st.none()))
def test_arbitrary_strings_are_other_only_for_an_unrestricted_iso_code(value):
    region = POLICY.region_for(value)
    if region == OTHER_REGION:
        folded = unicodedata.normalize("NFKC", value).strip().upper()
        assert folded in ISO_3166_1_ALPHA2, value
        assert folded not in RESTRICTED, value
    else:
        assert POLICY.is_restricted(region)


def test_a_policy_may_declare_more_restricted_regions():
    doc = _policy_doc()
    doc["regions"] = {
        "CH_FADP": {"restricted": True, "countries": ["CH"]},
        **doc["regions"],
    }
    forbidden = doc["categories"]["corporate_visitor_info"]["restrictions"][
        "forbidden_fields_in_regions"
    ]
    forbidden["CH_FADP"] = list(forbidden["EEA_UK"])
    policy = parse_policy(doc)
    assert policy.region_for(" ch ") == "CH_FADP"
    assert policy.is_restricted("CH_FADP")
    assert policy.region_for("uk") == "EEA_UK"


def _policy_doc() -> dict:
    return copy.deepcopy(yaml.safe_load(Path(default_policy_path()).read_text()))
