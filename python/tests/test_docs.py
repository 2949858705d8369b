"""The examples in the docstrings are true."""

import doctest

import kullback


def test_docstring_examples():
    r = doctest.testmod(kullback, extraglobs={"kullback": kullback},
                        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert r.failed == 0 and r.attempted >= 8, r
