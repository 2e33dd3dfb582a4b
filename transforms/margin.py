"""Cash balances in the base currency and the margin of every portfolio, as of the state's moment.

Account type. A portfolio is a ``MARGIN`` account when it is listed as one (settings) or holds
a short position (a short sale needs a margin account); otherwise a ``CASH`` account. Negative
settled cash in a cash account is flagged (``negative_settled_cash``), never hidden: a cash
account cannot borrow.

Cash balances (``cash_balances_base``): settled, pending and total cash per portfolio and
currency (``transforms.cash.cash_balances``), each also in the base currency at the positions'
rate (the CASH rows of ``transforms.positions``).

Margin (``margin``), under a ``MarginRules`` rule set (Reg T and FINRA 4210 style defaults):

- equity = nav = cash + long market value + short market value (short values are negative);
- initial requirement = long_initial * long + (short_initial - 1) * |short|: a short must be
  backed by ``short_initial`` (150%) of its value, of which 100% is the sale's own proceeds,
  so the owner's equity covers the other 50%;
- maintenance requirement = long_maintenance * long + short_maintenance * |short|;
- excess = equity - maintenance requirement (negative: a deficit); initial_excess = equity -
  initial requirement;
- buying power: in a margin account max(initial_excess, 0) / long_initial (the long value the
  excess can carry at the initial rate); in a cash account max(settled cash, 0);
- margin_call when a margin account's equity is below its maintenance requirement.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from transforms.contract import CASH_BALANCES_BASE_SCHEMA, MARGIN_SCHEMA


@dataclass(frozen=True)
class MarginRules:
    """Margin rates as fractions of market value (defaults: long 50% / 25%, short 150% / 30%)."""

    long_initial: float = 0.50
    long_maintenance: float = 0.25
    short_initial: float = 1.50
    short_maintenance: float = 0.30

    def __post_init__(self) -> None:
        if not 0 < self.long_initial <= 1 or not 0 <= self.long_maintenance <= self.long_initial:
            raise ValueError(f"long rates need 0 <= maintenance <= initial <= 1, got {self.long_maintenance} / {self.long_initial}")
        if self.short_initial < 1 or self.short_maintenance < 0:
            raise ValueError(f"short rates need initial >= 1 (100% is the proceeds) and maintenance >= 0, got "
                             f"{self.short_initial} / {self.short_maintenance}")


def account_types(positions: pl.DataFrame, portfolios: pl.DataFrame, margin_portfolios: list[str] = ()) -> pl.DataFrame:
    """(portfolio_id, account_type): MARGIN when listed in ``margin_portfolios`` or holding a
    SHORT position in ``positions``, else CASH; one row per portfolio of ``portfolios``."""
    short = positions.filter(pl.col("position_type") == "SHORT")["portfolio_id"].unique().implode()
    listed = pl.Series(list(margin_portfolios), dtype=pl.String).implode()
    return portfolios.select("portfolio_id").unique().with_columns(
        pl.when(pl.col("portfolio_id").is_in(short) | pl.col("portfolio_id").is_in(listed))
        .then(pl.lit("MARGIN"))
        .otherwise(pl.lit("CASH"))
        .alias("account_type")
    )


def cash_balances_base(balances: pl.DataFrame, positions: pl.DataFrame, accounts: pl.DataFrame) -> pl.DataFrame:
    """``CASH_BALANCES_BASE_SCHEMA``: ``balances`` (``transforms.cash.CASH_BALANCES_SCHEMA``) with
    the base currency, the rate (base per unit, from the positions' CASH rows; null when not
    convertible), the three amounts in base currency, the account type and
    ``negative_settled_cash`` (a cash account's settled cash below zero in that currency)."""
    cash_rows = positions.filter(pl.col("position_type") == "CASH").select(
        "portfolio_id", pl.col("instrument_id").str.strip_prefix("CASH:").alias("currency"), "fx_rate"
    )
    rate = pl.col("fx_rate")
    return (
        balances.join(cash_rows, on=["portfolio_id", "currency"], how="left")
        .join(accounts, on="portfolio_id", how="left")
        .with_columns(
            (pl.col("settled_cash") * rate).alias("settled_cash_base"),
            (pl.col("pending_cash") * rate).alias("pending_cash_base"),
            (pl.col("total_cash") * rate).alias("total_cash_base"),
            ((pl.col("account_type") == "CASH") & (pl.col("settled_cash") < 0)).fill_null(False).alias("negative_settled_cash"),
        )
        .select([pl.col(c).cast(t) for c, t in CASH_BALANCES_BASE_SCHEMA.items()])
        .sort("portfolio_id", "currency")
    )


def margin(portfolio_state: pl.DataFrame, accounts: pl.DataFrame, rules: MarginRules = MarginRules()) -> pl.DataFrame:
    """``MARGIN_SCHEMA``: one row per portfolio of ``portfolio_state``
    (``PORTFOLIO_STATE_SCHEMA``) with its requirements under ``rules`` (module formulas).
    A portfolio whose values are unknown (a value without an fx rate) has null figures."""
    long, short = pl.col("long_market_value"), pl.col("short_market_value").abs()
    equity = pl.col("equity")
    margin_account = pl.col("account_type") == "MARGIN"
    out = (
        portfolio_state.join(accounts, on="portfolio_id", how="left")
        .with_columns(pl.col("account_type").fill_null("CASH"), pl.col("total_value").alias("equity"))
        .with_columns(
            (rules.long_initial * long + (rules.short_initial - 1.0) * short).alias("initial_requirement"),
            (rules.long_maintenance * long + rules.short_maintenance * short).alias("maintenance_requirement"),
        )
        .with_columns(
            (equity - pl.col("maintenance_requirement")).alias("excess"),
            (equity - pl.col("initial_requirement")).alias("initial_excess"),
        )
        .with_columns(
            pl.when(margin_account)
            .then(pl.max_horizontal(pl.col("initial_excess"), 0.0) / rules.long_initial)
            .otherwise(pl.max_horizontal(pl.col("settled_cash"), 0.0))
            .alias("buying_power"),
            (margin_account & (pl.col("excess") < 0)).alias("margin_call"),
            ((pl.col("account_type") == "CASH") & (pl.col("settled_cash") < 0)).alias("negative_settled_cash"),
            pl.lit(rules.long_initial).alias("long_initial"),
            pl.lit(rules.long_maintenance).alias("long_maintenance"),
            pl.lit(rules.short_initial).alias("short_initial"),
            pl.lit(rules.short_maintenance).alias("short_maintenance"),
        )
    )
    return out.select([pl.col(c).cast(t) for c, t in MARGIN_SCHEMA.items()]).sort("portfolio_id")
