"""The fast paths of model building give what the general ones give.

build_model caches what it reads from a formula and the data's column labels (never the data),
factorizes grouping columns without pandas' Index of the uniques (short text columns with a
dict), builds interaction levels with numpy, reuses a column's levels for a second term that
reads it, and builds ``ModelStructure.data`` only when it is first read. Each is checked here
against the straightforward computation it replaces, across the dtypes a grouping column can
have, and the cache against frames it must not be reused for.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mixedmodels import formula as fm
from mixedmodels.formula import build_model, grouping_codes


def _reference_factorize(col: pd.Series) -> tuple[np.ndarray, list]:
    """The general path: Series.factorize, then the uniques sorted as Python objects."""
    codes, uniques = pd.factorize(col, sort=False)
    uniques = np.asarray(uniques, dtype=object)
    order = np.argsort(uniques, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = np.asarray(codes, dtype=np.int64)
    return np.where(codes >= 0, rank[np.maximum(codes, 0)], -1), list(uniques[order])


def _reference_grouping(data: pd.DataFrame, group_vars: tuple[str, ...]) -> tuple[np.ndarray, list, list]:
    """Interaction levels decoded one key at a time with Python's divmod."""
    codes_list, uniques_list = [], []
    for v in group_vars:
        col = data[v]
        if isinstance(col.dtype, pd.CategoricalDtype):
            col = col.cat.remove_unused_categories()
            codes, uniques = col.cat.codes.to_numpy(dtype=np.int64), list(col.cat.categories)
        else:
            codes, uniques = _reference_factorize(col)
        codes_list.append(codes)
        uniques_list.append([u.item() if isinstance(u, np.generic) else u for u in uniques])
    if len(group_vars) == 1:
        return codes_list[0], list(map(fm._label, uniques_list[0])), [(u,) for u in uniques_list[0]]
    combined = codes_list[0].copy()
    for c, u in zip(codes_list[1:], uniques_list[1:]):
        combined = combined * len(u) + c
    keys, codes = np.unique(combined, return_inverse=True)
    labels, raw = [], []
    for key in keys:
        parts = []
        for u in reversed(uniques_list):
            key, r = divmod(int(key), len(u))
            parts.append(u[r])
        parts.reverse()
        raw.append(tuple(parts))
        labels.append(":".join(fm._label(p) for p in parts))
    return codes.astype(np.int64), labels, raw


def _columns(n: int = 30) -> dict[str, pd.Series]:
    rng = np.random.default_rng(11)
    words = rng.choice(["bb", "a", "Ab", "c", "ä"], n)
    cols = {
        "object": pd.Series(words, dtype=object),
        "object_none": pd.Series(np.where(np.arange(n) % 7 == 0, None, words), dtype=object),
        "str_default": pd.Series(list(words)),
        "string_python": pd.Series(words, dtype="string[python]"),
        "string_pyarrow": pd.Series(words, dtype="string[pyarrow]"),
        "string_pyarrow_na": pd.Series(np.where(np.arange(n) % 5 == 0, None, words), dtype="string[pyarrow]"),
        "int": pd.Series(rng.integers(-3, 9, n)),
        "uint8": pd.Series(rng.integers(0, 9, n).astype(np.uint8)),
        "float": pd.Series(rng.integers(0, 6, n) / 2),
        "float_nan": pd.Series(np.where(np.arange(n) % 4 == 0, np.nan, rng.integers(0, 6, n) / 2)),
        "float16": pd.Series((rng.integers(0, 6, n) / 2).astype(np.float16)),
        "bool": pd.Series(rng.integers(0, 2, n).astype(bool)),
        "Int64_na": pd.Series(pd.array(np.where(np.arange(n) % 6 == 0, None, rng.integers(0, 5, n)), dtype="Int64")),
        "int_pyarrow": pd.Series(rng.integers(0, 5, n)).astype("int64[pyarrow]"),
        "datetime": pd.Series(pd.to_datetime("2021-03-01") + pd.to_timedelta(rng.integers(0, 4, n), unit="D")),
        "datetime_tz": pd.Series(pd.to_datetime("2021-03-01") + pd.to_timedelta(rng.integers(0, 4, n), unit="D")
                                 ).dt.tz_localize("UTC"),
        "category_unused": pd.Series(pd.Categorical(words, categories=["c", "bb", "a", "Ab", "ä", "unused"])),
        "category_ordered_na": pd.Series(pd.Categorical(np.where(np.arange(n) % 9 == 0, None, words),
                                                        categories=["c", "bb", "a", "Ab", "ä"], ordered=True)),
    }
    return cols


COLUMNS = _columns()
# Text columns longer than fm._SMALL_FACTORIZE take pandas' factorization instead of a dict.
LONG = {f"{k}_long": pd.concat([v] * 10, ignore_index=True) for k, v in COLUMNS.items() if k.startswith(("str", "object"))}
assert all(len(v) > fm._SMALL_FACTORIZE for v in LONG.values())
COLUMNS.update(LONG)


@pytest.mark.parametrize("kind", [k for k in COLUMNS if not k.startswith("category")])
def test_factorize_fast_path_matches_series_factorize(kind):
    col = COLUMNS[kind]
    codes, uniques = fm._sorted_factorize(col)
    ref_codes, ref_uniques = _reference_factorize(col)
    np.testing.assert_array_equal(codes, ref_codes)
    assert codes.dtype == np.int64
    assert list(uniques) == ref_uniques
    assert [type(u) for u in uniques] == [type(u) for u in ref_uniques]


@pytest.mark.parametrize("kind", list(COLUMNS))
def test_grouping_codes_match_reference(kind):
    data = pd.DataFrame({"g": COLUMNS[kind]})
    codes, labels, keys = grouping_codes(data, ("g",))
    ref = _reference_grouping(data, ("g",))
    np.testing.assert_array_equal(codes, ref[0])
    assert labels == ref[1]
    assert keys == ref[2]
    assert [type(k[0]) for k in keys] == [type(k[0]) for k in ref[2]]


@pytest.mark.parametrize("pair", [("object", "int"), ("string_pyarrow_na", "float_nan"), ("category_unused", "bool"),
                                  ("object_none", "category_ordered_na"), ("datetime", "string_pyarrow")])
def test_interaction_levels_match_reference(pair):
    # Missing values (code -1) included: grouping_codes is public and gets them from users.
    data = pd.DataFrame({"a": COLUMNS[pair[0]], "b": COLUMNS[pair[1]], "c": COLUMNS["uint8"]})
    for group_vars in [("a", "b"), ("b", "a", "c")]:
        codes, labels, keys = grouping_codes(data, group_vars)
        ref = _reference_grouping(data, group_vars)
        np.testing.assert_array_equal(codes, ref[0])
        assert labels == ref[1]
        assert keys == ref[2]


def test_a_column_read_by_two_terms_gives_each_its_own_codes():
    df = pd.read_csv(__import__("pathlib").Path(__file__).parent / "fixtures" / "pastes.csv")
    m = build_model("strength ~ 1 + (1 | batch/cask) + (1 | batch)", df)
    a, b = [t for t in m.reterms if t.group == "batch"]
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.codes is not b.codes and a.levels is not b.levels
    np.testing.assert_array_equal(a.codes, _reference_grouping(df, ("batch",))[0])


def test_rank_check_first_column():
    rng = np.random.default_rng(2)
    x = rng.normal(size=20)
    X = np.column_stack([np.zeros(20), x, 2 * x, np.ones(20), x + 1])
    assert fm._drop_dependent_columns(X, list("abcde")).tolist() == [1, 3]
    assert fm._drop_dependent_columns(X[:, :1], ["a"]).tolist() == []
    assert fm._drop_dependent_columns(X[:, 1:2], ["b"]).tolist() == [0]


# ---- the plan cache -----------------------------------------------------------------------


@pytest.fixture
def df():
    rng = np.random.default_rng(5)
    n = 24
    return pd.DataFrame({"y": rng.normal(size=n), "x": rng.normal(size=n),
                         "o": pd.Categorical(rng.choice(["lo", "mid", "hi"], n), categories=["lo", "mid", "hi"],
                                             ordered=True),
                         "g": np.repeat(list("abcdef"), 4)})


def test_cache_follows_the_columns_of_each_frame(df):
    f = "y ~ . + (1 | g)"
    assert build_model(f, df).xnames == ["(Intercept)", "x", "o.L", "o.Q"]
    assert build_model(f, df.drop(columns="x")).xnames == ["(Intercept)", "o.L", "o.Q"]
    assert build_model(f, df.assign(z=df["x"] ** 2)).xnames == ["(Intercept)", "x", "o.L", "o.Q", "z"]
    assert build_model(f, df).xnames == ["(Intercept)", "x", "o.L", "o.Q"]
    with pytest.raises(ValueError, match="'x'"):
        build_model("y ~ x + (1 | g)", df.drop(columns="x"))


def test_cache_follows_ordered_and_unordered_factors(df):
    f = "y ~ o + (1 | g)"
    unordered = df.assign(o=df["o"].cat.as_unordered())
    assert build_model(f, df).xnames == ["(Intercept)", "o.L", "o.Q"]
    assert build_model(f, unordered).xnames == ["(Intercept)", "omid", "ohi"]
    assert build_model(f, df).xnames == ["(Intercept)", "o.L", "o.Q"]
    as_text = df.assign(o=df["o"].astype(str))
    assert build_model(f, as_text).xnames == ["(Intercept)", "olo", "omid"]  # sorted; "hi" is the reference


def test_cache_tells_label_types_apart(df):
    # 1 and "1" are different columns: the dot spells them differently.
    with_int = pd.DataFrame({"y": df["y"], 1: df["x"], "g": df["g"]})
    with_str = with_int.rename(columns={1: "1"})
    assert build_model("y ~ . + (1 | g)", with_int).parsed.fixed_rhs == "(`1`)"
    key_int, key_str = fm._ColumnsKey(with_int.columns), fm._ColumnsKey(with_str.columns)
    assert key_int != key_str and fm._ColumnsKey(with_int.columns) == key_int


def test_cached_models_share_no_mutable_state(df):
    f = "y ~ x + (x | g)"
    a = build_model(f, df)
    a.parsed.random.clear()
    a.reterms[0].variables.append("junk")
    a.fixed_variables.append("junk")
    b = build_model(f, df)
    assert len(b.parsed.random) == 1 and b.reterms[0].variables == ["x"] and b.fixed_variables == ["x"]


def test_cache_never_holds_values(df):
    f = "y ~ x + (1 | g)"
    a = build_model(f, df)
    changed = df.assign(x=df["x"] * 10, y=df["y"] + 1)
    b = build_model(f, changed)
    np.testing.assert_allclose(b.X[:, 1], 10 * a.X[:, 1])
    np.testing.assert_allclose(b.y, a.y + 1)
    df.loc[0, "x"] = 99.0  # the user's frame changed in place after a fit
    assert build_model(f, df).X[0, 1] == 99.0
    assert a.X[0, 1] != 99.0 and a.data.loc[0, "x"] != 99.0


# ---- ModelStructure.data built on first use -------------------------------------------------


def test_deferred_data_is_the_frame_of_the_rows_used(df):
    import dataclasses
    import pickle

    m = build_model("y ~ x + (1 | g)", df)
    expected = df[["y", "x", "g"]].copy()
    fresh = build_model("y ~ x + (1 | g)", df)
    df.loc[0, "x"] = 99.0  # a change to the user's frame after the fit does not reach it
    df["y"] = 0.0
    pd.testing.assert_frame_equal(m.data, expected)
    assert m.data is m.data
    m.data.loc[1, "x"] = -5.0  # nor does a change to the model's frame reach the user's
    assert df.loc[1, "x"] == expected.loc[1, "x"]
    # pickled before the frame was built, it is built after unpickling
    back = pickle.loads(pickle.dumps(fresh))
    pd.testing.assert_frame_equal(back.data, expected)
    assert dataclasses.replace(build_model("y ~ x + (1 | g)", df), n_dropped=0).data.shape == (24, 3)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m.nope


def test_deferred_data_spec_predicts_after_the_users_frame_changed(df):
    m = build_model("y ~ x + (x | g)", df)
    new = df.iloc[:3].copy()
    expected = np.column_stack([np.ones(3), new["x"]])
    df["x"] = "text"  # the fitted spec is made from the snapshot, not from this
    np.testing.assert_array_equal(m.fixed_matrix(new), expected)
    np.testing.assert_array_equal(m.reterms[0].new_Z(new), expected)


def test_model_replace_keeps_the_frame_deferred(df):
    import dataclasses

    m = build_model("y ~ x + (1 | g)", df)
    w = np.linspace(1, 2, len(df))
    out = m.replace(weights=w)
    assert "_deferred_data" in out.__dict__ and "data" not in out.__dict__
    assert out.weights is w and m.weights is None
    expected = dataclasses.replace(build_model("y ~ x + (1 | g)", df), weights=w)
    pd.testing.assert_frame_equal(out.data, expected.data)
    np.testing.assert_array_equal(out.X, expected.X)
    frame = df[["y", "g"]]
    assert m.replace(data=frame).data is frame
    with pytest.raises(TypeError, match="no field"):
        m.replace(wieghts=w)


@pytest.mark.parametrize("index", [None, [f"r{i}" for i in range(24)][::-1]])
@pytest.mark.parametrize("drop", [False, True])
def test_weights_and_offset_follow_the_rows_used(df, index, drop):
    from mixedmodels.offsets import attach_offset
    from mixedmodels.weights import attach_weights

    data = df.assign(w=np.linspace(1, 3, len(df)), o=np.linspace(-1, 1, len(df)))
    if index is not None:
        data.index = index
    if drop:
        data.loc[data.index[[2, 7]], "x"] = np.nan
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        m = build_model("y ~ x + (1 | g)", data)
    used = data.loc[m.rows]
    arr_w, arr_o = data["w"].to_numpy() * 2, data["o"].to_numpy() * 3
    for w, expected in [("w", used["w"]), (arr_w, 2 * used["w"])]:
        np.testing.assert_array_equal(attach_weights(m, w, data).weights, expected.to_numpy())
    for o, expected in [("o", used["o"]), (arr_o, 3 * used["o"])]:
        np.testing.assert_array_equal(attach_offset(m, o, data).offset, expected.to_numpy())
    assert not np.shares_memory(attach_weights(m, arr_w, data).weights, arr_w)
