"""The serving contract: the version-folder rule as TF Serving applies it, and the names."""

from pathlib import Path

import pytest

from unet_keras import contract


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("1", 1),
        ("0042", 42),
        (str(2**63 - 1), 2**63 - 1),
        (str(2**63), None),  # does not fit int64: TF Serving skips it
        ("99999999999999999999", None),
        ("-1", None),
        ("1a", None),
        (".1.partial-x", None),
        ("", None),
    ],
)
def test_version_numbers_are_int64_names(name, number):
    assert contract.version_number(name) == number


def test_version_folders_and_the_next_version(tmp_path: Path):
    assert contract.next_version(tmp_path / "absent") == 1
    for name in ("1", "3", "99999999999999999999", "notes", ".4.partial-x"):
        (tmp_path / name).mkdir()
    assert sorted(contract.version_folders(tmp_path)) == [1, 3]
    assert contract.next_version(tmp_path) == 4


def test_every_signature_names_its_inputs_and_outputs():
    assert contract.SIGNATURES[contract.SEGMENT] == (
        (contract.IMAGE,),
        (contract.PROBABILITIES, contract.MASK),
    )
    assert set(contract.SIGNATURES) == {"serving_default", "segment_png", "metadata", "tiles"}


def test_wire_types_name_one_field_each():
    assert len({wire.name for wire in contract.WIRE_TYPES}) == len(contract.WIRE_TYPES)
    assert all(wire.field.endswith("_val") for wire in contract.WIRE_TYPES)
