"""The conventions every performance and risk figure uses, in one place.

- **Periods.** Returns are daily, one per business day of the price calendar; a year is
  ``PERIODS_PER_YEAR`` = 252 of them. Annualising: a mean return times 252, a volatility times
  sqrt(252), a compound return ``(1 + R) ** (252 / n) - 1`` over ``n`` daily returns.
- **Sample statistics** use ``DDOF`` = 1 (the sample standard deviation), as empyrical does.
  Downside deviation (Sortino) is the root mean square of the returns below the target, over
  every period (empyrical's ``downside_risk``), not a sample estimate.
- **Risk-free rate.** Settings give an annual rate; a daily figure subtracts
  ``risk_free_per_period(annual)`` = ``(1 + annual) ** (1 / 252) - 1`` from each daily return.
- **External flows** (deposits and withdrawals; ``daily_valuations.net_flows``) arrive at the
  start of the day they are counted on, so they earn that day's return: the day's return is
  ``nav / (previous nav + net_flows) - 1`` (the time-weighted return with daily valuations).
  Income (dividends, interest) and fees are not external: they are part of the return. The
  first valued day's previous nav is 0, so a portfolio funded by a deposit on its first day has
  a return that day. A day whose capital (previous nav + flows) is zero or negative has no
  return: it is flagged, never a NaN or an infinity.
"""

from __future__ import annotations

PERIODS_PER_YEAR = 252
DDOF = 1


def risk_free_per_period(annual_rate: float) -> float:
    """The daily rate that compounds to ``annual_rate`` over ``PERIODS_PER_YEAR`` days:
    ``(1 + annual_rate) ** (1 / 252) - 1``. Raises ``ValueError`` below -100%."""
    if annual_rate <= -1.0:
        raise ValueError(f"an annual risk-free rate must be above -100%, got {annual_rate}")
    return (1.0 + annual_rate) ** (1.0 / PERIODS_PER_YEAR) - 1.0
