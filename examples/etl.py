"""ETL: CSV rows in, cleaned, aggregated per region, written out as CSV.

    python examples/etl.py [--rows N] [--input sales.csv] [--output totals.csv]
    reflux run examples/etl.py            # the same on a generated sample

rows (Extractor: csv.DictReader) -> clean (Transformer: types, trimming;
malformed rows become error records, on_error="dead_letter") -> sales
(Filter: drop refunds and zero amounts) -> batches (Accumulator, 500 rows)
-> partial (Transformer: per-region totals of one batch) -> totals (Loader:
merges the partial totals and writes the output CSV when the stream ends).
Malformed rows go to the "rejects" Loader with the reason.
"""
from __future__ import annotations

import argparse
import csv
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reflux import Accumulator, Error, Extractor, Filter, Loader, Pipeline, Transformer

REGIONS = ("north", "south", "east", "west")
FIELDS = ("order_id", "region", "amount", "quantity")


def make_sample_csv(path: Path, rows: int, seed: int = 1) -> Path:
    """Write a sales CSV with some dirt: stray spaces, mixed case, refunds,
    and every 50th row malformed."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for i in range(rows):
            region = rng.choice(REGIONS)
            amount = f"{rng.uniform(-20, 200):.2f}"
            if i % 50 == 49:
                amount = "n/a"  # malformed
            w.writerow([i, f"  {region.upper() if i % 3 else region} ", amount, rng.randint(0, 5)])
    return path


def read_rows(path: Path) -> Iterator[dict[str, str]]:
    """The CSV's rows as dicts (the file stays open only while the pipeline reads it)."""
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def clean(row: dict[str, str]) -> Any:
    """Typed, trimmed row; a malformed one becomes an error record (not an exception)."""
    try:
        return {"order_id": int(row["order_id"]), "region": row["region"].strip().lower(),
                "amount": float(row["amount"]), "quantity": int(row["quantity"])}
    except (KeyError, ValueError) as exc:
        return Error(ValueError(f"malformed row {row!r}: {exc}"))


def partial_totals(batch: list[dict[str, Any]]) -> dict[str, tuple[int, float, int]]:
    """Per-region (orders, revenue, units) of one batch of rows."""
    out: dict[str, tuple[int, float, int]] = {}
    for r in batch:
        n, revenue, units = out.get(r["region"], (0, 0.0, 0))
        out[r["region"]] = (n + 1, revenue + r["amount"], units + r["quantity"])
    return out


class TotalsWriter:
    """A Loader function: merges partial totals; on close, writes the output CSV."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.totals: dict[str, tuple[int, float, int]] = {}

    def __call__(self, partial: dict[str, tuple[int, float, int]]) -> None:
        for region, (n, revenue, units) in partial.items():
            a, b, c = self.totals.get(region, (0, 0.0, 0))
            self.totals[region] = (a + n, b + revenue, c + units)

    def close(self) -> None:
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(("region", "orders", "revenue", "units"))
            for region in sorted(self.totals):
                n, revenue, units = self.totals[region]
                w.writerow((region, n, f"{revenue:.2f}", units))

    def result(self) -> dict[str, tuple[int, float, int]]:
        return dict(self.totals)


def build(input_csv: Path, output_csv: Path, batch: int = 500) -> Pipeline:
    """The ETL pipeline from ``input_csv`` to ``output_csv``."""
    rejects = Loader.to_list(name="rejects")
    p = Pipeline(name="etl", dead_letter=rejects)
    p.add(Extractor(read_rows(Path(input_csv)), name="rows")
          >> Transformer(clean, name="clean", on_error="dead_letter")
          >> Filter(lambda r: r["amount"] > 0, name="sales")
          >> Accumulator(batch, name="batches")
          >> Transformer(partial_totals, name="partial")
          >> Loader(TotalsWriter(Path(output_csv)), name="totals"))
    return p


def pipeline() -> Pipeline:
    """For ``reflux run examples/etl.py``: 20,000 generated rows in the temp folder."""
    tmp = Path(tempfile.mkdtemp(prefix="reflux-etl-"))
    return build(make_sample_csv(tmp / "sales.csv", 20_000), tmp / "totals.csv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows of the generated sample")
    ap.add_argument("--input", type=Path, help="a CSV with columns order_id,region,amount,quantity")
    ap.add_argument("--output", type=Path, default=Path("totals.csv"))
    args = ap.parse_args()
    source = args.input or make_sample_csv(Path(tempfile.mkdtemp()) / "sales.csv", args.rows)
    result = build(source, args.output).run(progress=None)
    print(result.summary())
    print(f"{len(result.dead_letters) + len(result.results['rejects'])} malformed rows rejected; "
          f"totals written to {args.output}")


if __name__ == "__main__":
    main()
