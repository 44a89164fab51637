"""A seeded table of food deliveries: the second use case, a regression of another shape.

Each row is an order: when it was placed, the restaurant (the entity), the distance, the basket,
the weather and the courier's vehicle, and how many minutes the delivery took (the label, known
when the order arrives: ``delivered_at``). Minutes grow with distance, basket size and the
restaurant's load over the last hour, and with rain; from ``--drift-day`` on, storms become
common (a covariate shift for monitoring to find).

    python examples/delivery_times/generate.py --out data/deliveries.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

WEATHER = ["clear", "cloudy", "rain", "storm"]
WEATHER_P = [0.55, 0.25, 0.17, 0.03]
WEATHER_P_DRIFT = [0.35, 0.2, 0.25, 0.2]
WEATHER_MINUTES = {"clear": 0.0, "cloudy": 1.0, "rain": 6.0, "storm": 14.0}
VEHICLES = ["bike", "scooter", "car"]
SPEED_KMH = {"bike": 14.0, "scooter": 22.0, "car": 26.0}


def generate(rows: int = 30_000, days: int = 120, restaurants: int = 300, seed: int = 7,
             start: str = "2025-01-01", drift_day: int | None = 90) -> pd.DataFrame:  # fmt: skip
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(start, tz="UTC")
    offset_days = np.sort(rng.uniform(0, days, rows))
    hour = rng.choice(24, rows, p=_hour_profile())
    ordered_at = (
        t0
        + pd.to_timedelta(np.floor(offset_days), unit="D")
        + pd.to_timedelta(hour * 3600 + rng.uniform(0, 3600, rows), unit="s")
    )
    order = np.argsort(ordered_at.to_numpy(), kind="stable")
    ordered_at = ordered_at[order]
    restaurant = rng.zipf(1.6, rows) % restaurants + 1
    prep = rng.gamma(4.0, 3.0, restaurants + 1)  # each restaurant's own kitchen time
    distance = np.round(rng.gamma(2.0, 1.6, rows), 2)
    items = rng.poisson(2.5, rows) + 1
    drifted = (offset_days[order] >= drift_day) if drift_day is not None else np.zeros(rows, bool)
    weather = np.where(drifted, rng.choice(WEATHER, rows, p=WEATHER_P_DRIFT), rng.choice(WEATHER, rows, p=WEATHER_P))
    vehicle = rng.choice(VEHICLES, rows, p=[0.4, 0.4, 0.2])
    frame = pd.DataFrame(
        {
            "order_id": np.arange(1, rows + 1),
            "ordered_at": ordered_at,
            "restaurant_id": restaurant,
            "distance_km": distance,
            "items": items,
            "weather": weather,
            "vehicle": vehicle,
        }
    )
    # The restaurant's load: its orders in the hour before this one (what the declared 1h count sees).
    load = (
        frame.set_index("ordered_at").groupby("restaurant_id")["order_id"].rolling("1h", closed="left").count()
        .reset_index(level=0, drop=True).reindex(frame["ordered_at"]).fillna(0).to_numpy()
    )  # fmt: skip
    speed = np.array([SPEED_KMH[v] for v in vehicle])
    minutes = (
        prep[restaurant] + 2.0 * np.sqrt(items) + 60 * distance / speed + 1.5 * load
        + np.array([WEATHER_MINUTES[w] for w in weather]) + rng.normal(0, 3.0, rows)
    )  # fmt: skip
    frame["delivery_minutes"] = np.round(np.clip(minutes, 5, None), 1)
    frame["delivered_at"] = frame["ordered_at"] + pd.to_timedelta(frame["delivery_minutes"], unit="min")
    # Real tables have holes: the vehicle is sometimes not recorded.
    frame.loc[rng.random(rows) < 0.02, "vehicle"] = None
    return frame


def _hour_profile() -> np.ndarray:
    p = np.array([1, 0.5, 0.3, 0.2, 0.2, 0.3, 0.6, 1, 1.5, 1.5, 2, 4, 6, 4, 2, 1.5, 2, 4, 7, 8, 6, 4, 2.5, 1.5])
    return p / p.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="parquet or .csv file to write")
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    frame = generate(rows=args.rows, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".csv":
        frame.to_csv(args.out, index=False)
    else:
        frame.to_parquet(args.out, index=False)
    print(f"{len(frame):,} deliveries, {frame['ordered_at'].min():%Y-%m-%d} → {frame['ordered_at'].max():%Y-%m-%d}, "
          f"mean {frame['delivery_minutes'].mean():.1f} min → {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
