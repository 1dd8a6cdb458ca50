"""The one layer vocabulary (activation_cache.layers): specs from commands and Python, to store names and back."""

from __future__ import annotations

import numpy as np
import pytest

from activation_cache.errors import InputError
from activation_cache.layers import block_indices, layer_spec, parse_layers, select_layers, spec_names


def test_every_spec_form_names_the_same_layers():
    n = 30
    assert parse_layers("middle", n) == ["15"] and parse_layers("middle", 3) == ["1"]
    assert parse_layers("all", 4) == ["0", "1", "2", "3"]
    assert parse_layers("-1", n) == ["29"] and parse_layers("27--1", n) == ["27", "28", "29"]
    assert parse_layers(15, n) == parse_layers("15", n) == parse_layers([15], n) == parse_layers(np.int64(15), n)
    assert parse_layers([10, "middle", -1], n) == ["10", "15", "29"]
    assert parse_layers("15,10", n) == ["10", "15"]  # the store's layout: sorted
    assert parse_layers("15,10,15", n, sort=False) == ["15", "10"]  # features in the order given, once each
    assert parse_layers("embed,middle", n, embed=True) == ["embed", "15"]


@pytest.mark.parametrize("spec, message", [
    (30, "unknown layer 30"), ([-31], "unknown layer -31"), ("5-2", "is empty"), ("mid", "'mid'"),
    ([1.5], "is not a layer"), (True, "is not a layer spec"), ("", "selects no layer"), ([], "selects no layer"),
])
def test_bad_specs_name_the_entry(spec, message):
    with pytest.raises(InputError, match=message):
        parse_layers(spec, 30)


def test_select_layers_checks_the_store_and_names_round_trip():
    assert select_layers("middle", 30, ["0", "15"]) == ["15"]
    with pytest.raises(InputError, match=r"layer\(s\) 3 not in traj.h5 \(it has 0, 15\)"):
        select_layers("3,15", 30, ["0", "15"], where="traj.h5")
    names = parse_layers("12,-1", 30, sort=False)
    assert spec_names(layer_spec(names)) == names == ["12", "29"] and spec_names("") == []
    assert block_indices(names) == [12, 29]
    with pytest.raises(InputError, match="not a decoder block"):
        block_indices(["embed", "3"])
