"""Layer specs: all, ranges, lists."""

import pytest

import irm


def test_layer_specs():
    assert irm.parse_layers("all", 4) == [0, 1, 2, 3]
    assert irm.parse_layers("0-2,3", 8) == [0, 1, 2, 3]
    assert irm.parse_layers("2,3", 8) == [2, 3]
    assert irm.parse_layers("-1", 8) == [7]
    assert irm.format_layers([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    for bad in ("", "x", "3-1", "9", "1,,2"):
        with pytest.raises(irm.IRMError):
            irm.parse_layers(bad, 8)
