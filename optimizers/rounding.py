"""Whole round lots for the optimiser's trades, and a greedy repair that keeps every hard constraint.

The solver returns continuous post-trade sleeve weights ``W`` (n x S). A trade is published in
shares, whole round lots and at least a minimum size, and only if the rounded book still keeps
every hard constraint ``optimizers.problem.violations`` checks. ``round_trades`` does it:

**Shares.** With ``w = W 1``, ``w0 = W0 1`` (``W0 = x.current``), ``unit_value_i`` one share's
value in the base currency (price * fx) and ``nav`` the portfolio's value:
``q_i = (w_i - w0_i) * nav / unit_value_i`` (signed, + buy), the holding ``h_i = w0_i * nav /
unit_value_i`` shares, and a trade of ``q_i`` shares is ``z_i = q_i * unit_value_i / nav`` of NAV.

**Step 1, rounding.** ``q_i`` goes to the nearest multiple of ``lot_size_i`` (half a lot away from
zero: 149 -> 100, 150 -> 200, 151 -> 200 with a lot of 100; within ``HALF_LOT_SLACK`` = 1e-9 lot
below a half counts as the half, so float noise cannot flip it); a rounded trade worth
``|q_i| unit_value_i < min_trade_value`` becomes 0. Two exceptions keep long-only books valid:

- *closing is always allowed*: when the solver sells the whole holding (``|w_i| <=
  FEASIBILITY_TOLERANCE`` with ``h_i != 0``) the trade is ``-h_i`` exactly, a round lot or not and
  whatever its value (so an odd-lot or dust position can be closed; its trade is ``-w0_i`` of NAV);
- *a sale never exceeds the holding*: on a long-only book (and, in any book, for a long holding
  the solver does not take short) a sell rounded past ``h_i`` becomes ``-h_i``, the same close.

So every quantity is a multiple of its lot, except a close (``q_i = -h_i``).

**Step 2, repair** (only when ``violations()`` of the rounded book is not empty). The total
violation ``V(z) = sum over groups and their rows of max(amount - REPAIR_MARGIN, 0)``, where the
amounts are those ``violations`` measures (budget both ways, bounds (and ``w >= 0`` on long-only
books), liquidity incl. wash-sale ``buy_cap = 0``, each sector / class cap, turnover, tracking
error, each sector risk budget); weights and annualised volatility are both fractions of NAV, so
they add without scaling. The margin, half the check's tolerance, keeps float noise between
this measure and ``violations`` from flipping the verdict.

The movable instruments are those the solver trades (``|z_i| > FEASIBILITY_TOLERANCE``) or whose
rounded trade is not zero; instruments the solver leaves alone are never traded by the repair
(an order the optimiser did not choose would bring unmodelled tax and surprise the manager), and
a trade never changes sign (a buy stays a buy or becomes zero). A movable instrument moves along
its grid ``{0} u {k lot_i : k lot_i unit_value_i >= min_trade_value} u {-h_i}`` (the close only
where sales stop at the holding): its candidates are the next grid point toward zero and the next
one away from zero (in the solver's direction), and also 10 and 100 grid steps each way
(``STEP_LOTS``; toward zero never past it, away never past the holding), so that lots of one share
can cover a large violation in a few moves; a bigger step is taken only when it leaves a lower
``V`` than every smaller one. Every candidate is evaluated at once in numpy: the
single-coordinate change of the tracking variance has the closed form

    ||G (a + d e_i)||^2 + sum sv (a + d e_i)^2 = Q + 2 d [(G'G a)_i + sv_i a_i] + d^2 [||G_i||^2 + sv_i]

(``coordinate_move_variance``; the same per sector for the sector risk budgets, with ``a`` that
sector's active weights), the caps change by ``d`` in the instrument's own group, the costs
(hence the budget) and turnover change only in the instrument's own term.

- *Greedy*: take the move with the lowest ``V`` while it lowers ``V`` (ties, within 1e-14 (1 + V): the
  move that moves the trade least away from the solver's, in weights), until ``V = 0`` and
  ``violations() == {}``.
- *Breakout* when no move lowers ``V`` and the book still breaks something: each group still
  broken is weighed double in ``V`` (``V = sum_g f_g V_g``, all ``f_g = 1`` at first), and the
  greedy goes on; a move that trades a breach for a smaller one elsewhere (a sale one lot past a
  liquidity cap undone, the sector cap it was fixing then fixed by another sale) becomes an
  improvement. At most ``MAX_BUMPS`` = 30 doublings.
- *Last resort* when that is exhausted: the largest trade (``|z_i|``, the largest contribution to
  cash, turnover and risk) moves one grid step toward zero even if ``V`` rises, and from then on
  it may only shrink; the greedy then resumes. Repeated (step limit permitting) this ends at no
  trade at all, which fails only if the current book itself breaks a hard constraint.
- ``max_steps`` moves at most (default ``4 n + 100``). ``violations()`` is the final judge: if it is
  not empty after the repair the result is ``REJECTED`` and nothing is published for the portfolio
  (the returned quantities and weights are the last attempt, for diagnosis).

**Sleeves.** Only the total ``w`` enters the hard constraints (besides ``W >= 0`` on long-only
books). With the solver's sleeve changes ``D_s = W_s - W0_s`` and the rounding residual
``e = z_rounded - z_solver`` (per instrument), ``W_s = W_solver_s + p_s e`` where ``p_s = D_s^+ /
sum D^+`` over the sleeves changing in the direction of the solver's net trade. Without internal
transfers (every ``D_s`` of one sign) this is exactly the rounded total split in proportion to the
sleeve changes, ``W_s = W0_s + D_s z_rounded / z_solver``; with transfers, the solver's transfers are
kept and only the residual is split. When the changes net to zero (or there are none) the
transfers are kept and the whole residual goes to the sleeve with the largest ``|D_s|`` (no change
at all: the largest current sleeve). On long-only books a sleeve pushed below zero is lifted to 0
and the shortfall taken from the instrument's other sleeves in proportion to their weights (a
free internal transfer), and a closed instrument is exactly 0 in every sleeve. Each row of the
result sums to ``w0_i + z_i``. A sleeve only receives a residual that moves it back toward its
current weight or further the way the solver moved it, so a sleeve the solver may not add to
(``optimizers.problem.sleeve_upper``) is not added to here either.
"""

from __future__ import annotations

import transforms  # noqa: F401  (sets the Polars engine)

from dataclasses import dataclass, field

import numpy as np

from optimizers.costs import IMPACT_EXPONENT
from optimizers.problem import CONSTRAINT_GROUPS, FEASIBILITY_TOLERANCE, RebalanceInputs, factor_loadings, violations

ROUNDED, REPAIRED, REJECTED = "ROUNDED", "REPAIRED", "REJECTED"
ROUNDING_STATUSES = (ROUNDED, REPAIRED, REJECTED)
# the repair aims below half the check's tolerance, so that float noise cannot flip the verdict
REPAIR_MARGIN = FEASIBILITY_TOLERANCE / 2
TIE = 1e-14  # candidate violations this close (relative to 1 + V) are a tie
HALF_LOT_SLACK = 1e-9  # in lots
STEP_LOTS = (1, 10, 100)  # repair move sizes, in lots
MAX_BUMPS = 30  # times the broken groups' weights may double (2^30) before the last resort


@dataclass(frozen=True)
class RoundedTrade:
    """The result of ``round_trades``: ``quantity`` (n) signed shares (+ buy), ``weights`` (n, S) the
    post-trade sleeve weights, ``status`` (``ROUNDED``: rounding alone kept every constraint;
    ``REPAIRED``; ``REJECTED``: publish nothing), ``violations`` (``violations()`` of the final
    weights, empty unless REJECTED), ``repair_steps`` (moves made) and a ``message``."""

    quantity: np.ndarray
    weights: np.ndarray
    status: str
    violations: dict[str, float] = field(default_factory=dict)
    repair_steps: int = 0
    message: str = ""


def _variance_terms(active: np.ndarray, G: np.ndarray, specific_variance: np.ndarray, labels: np.ndarray | None,
                    groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group ``g``: ``Q_g = ||G a_g||^2 + sum sv a_g^2`` with ``a_g`` the active weights of the
    group's members (no labels: one group of all); per instrument ``slope_i = (G'G a_g)_i + sv_i a_i``
    for its own group (0 without a group) and ``keep_i`` (it has a group)."""
    n = active.shape[0]
    labels = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    keep = (labels >= 0) & (labels < groups)
    own = np.where(keep, labels, 0)
    by_group = np.zeros((n, groups))
    by_group[np.flatnonzero(keep), own[keep]] = active[keep]
    Ga = G @ by_group  # k x groups
    base = np.sum(Ga**2, axis=0) + np.bincount(own[keep], weights=(specific_variance * active**2)[keep], minlength=groups)
    slope = np.where(keep, np.einsum("ki,ki->i", G, Ga[:, own]) + specific_variance * active, 0.0)
    return base, slope, keep


def coordinate_move_variance(active: np.ndarray, G: np.ndarray, specific_variance: np.ndarray, delta: np.ndarray,
                             labels: np.ndarray | None = None) -> np.ndarray:
    """The tracking variance after moving one coordinate, for every coordinate at once.

    Inputs: ``active`` (n) active weights ``a``, ``G`` (k, n) factor loadings
    (``optimizers.problem.factor_loadings``), ``specific_variance`` (n), ``delta`` (..., n) the move
    ``d_i`` of coordinate ``i``; ``labels`` (n) optional group labels (``-1``: no group).
    Output (..., n): ``||G (a + d_i e_i)||^2 + sum sv (a + d_i e_i)^2`` by the closed form
    ``Q + 2 d_i [(G'G a)_i + sv_i a_i] + d_i^2 [||G_i||^2 + sv_i]``; with ``labels``, ``a`` is
    restricted to instrument ``i``'s own group (the sector risk of ``i``'s sector), and an
    instrument without a group gets 0.
    """
    active = np.asarray(active, dtype=float)
    groups = 1 if labels is None else int(max(np.max(labels, initial=-1) + 1, 1))
    curvature = np.sum(G**2, axis=0) + specific_variance
    base, slope, keep = _variance_terms(active, G, specific_variance, labels, groups)
    own = np.zeros(active.shape[0], dtype=np.int64) if labels is None else np.where(keep, labels, 0)
    delta = np.asarray(delta, dtype=float)
    return np.where(keep, base[own] + 2 * delta * slope + delta**2 * curvature, 0.0)


def _hinge(amount: np.ndarray | float) -> np.ndarray:
    """The part of a breach beyond ``REPAIR_MARGIN`` (0 within it)."""
    return np.maximum(np.asarray(amount, dtype=float) - REPAIR_MARGIN, 0.0)


class _Book:
    """One portfolio's constants for the violation measure."""

    def __init__(self, x: RebalanceInputs, G: np.ndarray):
        self.x, self.G = x, G
        self.w0 = x.current.sum(axis=1)
        self.t = x.target.sum(axis=1)
        self.curvature = np.sum(G**2, axis=0) + x.specific_variance

    def _cost(self, z: np.ndarray) -> np.ndarray:
        a = np.abs(z)
        return self.x.linear * a + self.x.impact * a**IMPACT_EXPONENT

    def _budget(self, spend: np.ndarray | float, cost: np.ndarray | float) -> np.ndarray:
        x = self.x
        return _hinge(x.cash_min - (x.cash - spend - cost)) + _hinge(x.cash - spend - x.cash_max)

    def _bounds(self, w: np.ndarray) -> np.ndarray:
        x = self.x
        out = _hinge(x.lower - w) + _hinge(w - x.upper)
        return out + _hinge(-w) if x.long_only else out

    def _liquidity(self, z: np.ndarray) -> np.ndarray:
        return _hinge(z - self.x.buy_cap) + _hinge(-z - self.x.sell_cap)

    def _risk(self, active: np.ndarray, d: np.ndarray, labels: np.ndarray | None, limits: np.ndarray) -> tuple[float, np.ndarray]:
        base, slope, keep = _variance_terms(active, self.G, self.x.specific_variance, labels, len(limits))
        now = _hinge(np.sqrt(np.maximum(base, 0.0)) - limits)
        own = np.zeros(active.shape[0], dtype=np.int64) if labels is None else np.where(keep, labels, 0)
        moved = base[own] + 2 * d * slope + d**2 * self.curvature
        change = _hinge(np.sqrt(np.maximum(moved, 0.0)) - limits[own]) - now[own]
        return float(now.sum()), np.where(keep, change, 0.0)

    def measure(self, z: np.ndarray, d: np.ndarray, factor: dict[str, float]) -> tuple[float, np.ndarray, dict[str, float]]:
        """``V(z)`` and ``V(z + d_ci e_i)`` for every candidate row ``c`` of ``d`` (m, n), each group's
        amounts multiplied by its ``factor``; a NaN move is no candidate (``inf``). Also each group's
        own (unweighted) ``V`` now."""
        x = self.x
        w = self.w0 + z
        dd = np.nan_to_num(d, nan=0.0)
        zn = z + dd
        groups: dict[str, tuple[float, np.ndarray]] = {}  # group -> (V now, change of V per candidate)
        cost_now, cost_moved = self._cost(z), self._cost(zn)
        spend, cost = float(z.sum()), float(cost_now.sum())
        budget = float(self._budget(spend, cost))
        groups["budget"] = budget, self._budget(spend + dd, cost + cost_moved - cost_now) - budget
        for group, term, now_arg, moved_arg in (("bounds", self._bounds, w, w + dd), ("liquidity", self._liquidity, z, zn)):
            now = term(now_arg)
            groups[group] = float(now.sum()), term(moved_arg) - now
        for group, labels, caps in (("sector_caps", x.sector, x.sector_cap), ("class_caps", x.asset_class, x.class_cap)):
            if caps is not None:
                keep = labels >= 0
                own = np.where(keep, labels, 0)
                sums = np.bincount(own[keep], weights=w[keep], minlength=len(caps))
                now = _hinge(sums - caps)
                groups[group] = float(now.sum()), np.where(keep, _hinge(sums[own] + dd - caps[own]) - now[own], 0.0)
        if x.turnover_max is not None:
            traded = float(np.abs(z).sum())
            now = float(_hinge(traded - x.turnover_max))
            groups["turnover"] = now, _hinge(traded + np.abs(zn) - np.abs(z) - x.turnover_max) - now
        active = w - self.t
        if x.te_max is not None:
            groups["tracking_error"] = self._risk(active, dd, None, np.array([x.te_max]))
        if x.sector_risk_budget is not None:
            groups["sector_risk"] = self._risk(active, dd, x.sector, np.asarray(x.sector_risk_budget, dtype=float))
        total = sum(factor[g] * now for g, (now, _) in groups.items())
        moved = total + sum(factor[g] * change for g, (_, change) in groups.items())
        return total, np.where(np.isnan(d), np.inf, moved), {g: now for g, (now, _) in groups.items()}


def _split(x: RebalanceInputs, weights: np.ndarray, z: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """Sleeve weights after the rounded trades ``z`` (module docstring, **Sleeves**)."""
    D = weights - x.current
    net = D.sum(axis=1)
    residual = z - net
    along = np.clip(D * np.sign(net)[:, None], 0.0, None)
    spread = along.sum(axis=1)
    fallback = np.where(np.abs(D).max(axis=1) > 0, np.abs(D).argmax(axis=1), x.current.argmax(axis=1))
    share = np.zeros_like(D)
    share[np.arange(len(z)), fallback] = 1.0
    share = np.where((spread > 0)[:, None], along / np.where(spread > 0, spread, 1.0)[:, None], share)
    out = weights + residual[:, None] * share
    if x.long_only:
        positive = np.clip(out, 0.0, None)
        held = positive.sum(axis=1)
        total = np.clip(out.sum(axis=1), 0.0, None)
        fix = (out < 0).any(axis=1) & (held > 0)
        out[fix] = positive[fix] * (total[fix] / held[fix])[:, None]
    out[closed] = 0.0
    return out


def _check(x: RebalanceInputs, weights: np.ndarray, nav: float, unit_value: np.ndarray, lot_size: np.ndarray,
           min_trade_value: float, max_steps: int | None) -> None:
    x.validate()
    n = x.n
    if weights.shape != x.current.shape:
        raise ValueError(f"round_trades: weights has shape {weights.shape}, expected {x.current.shape}")
    if not np.all(np.isfinite(weights)):
        raise ValueError("round_trades: weights has a NaN or infinite value")
    for name, value in (("unit_value", unit_value), ("lot_size", lot_size)):
        if value.shape != (n,):
            raise ValueError(f"round_trades: {name} has shape {value.shape}, expected ({n},)")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"round_trades: {name} has a NaN or infinite value")
    if np.any(unit_value <= 0):
        raise ValueError("round_trades: unit_value must be > 0")
    if np.any(lot_size < 1) or np.any(lot_size != np.round(lot_size)):
        raise ValueError("round_trades: lot_size must be a whole number >= 1")
    if not (np.isfinite(nav) and nav > 0):
        raise ValueError(f"round_trades: nav must be > 0, got {nav}")
    if not (np.isfinite(min_trade_value) and min_trade_value >= 0):
        raise ValueError(f"round_trades: min_trade_value must be >= 0, got {min_trade_value}")
    if max_steps is not None and max_steps < 0:
        raise ValueError(f"round_trades: max_steps must be >= 0, got {max_steps}")


def round_trades(x: RebalanceInputs, weights: np.ndarray, nav: float, unit_value: np.ndarray, lot_size: np.ndarray,
                 min_trade_value: float = 0.0, max_steps: int | None = None) -> RoundedTrade:
    """Round the solver's trades to whole lots and repair them until every hard constraint holds.

    Inputs: ``x`` the portfolio's ``RebalanceInputs``; ``weights`` (n, S) the solver's post-trade
    sleeve weights; ``nav`` (> 0, base currency); ``unit_value`` (n, > 0) one share's value in the
    base currency (price * fx); ``lot_size`` (n) whole shares >= 1; ``min_trade_value`` (base
    currency) the smallest trade worth sending; ``max_steps`` the most repair moves (default
    ``4 n + 100``). Output: ``RoundedTrade`` (quantities in shares, sleeve weights, ROUNDED /
    REPAIRED / REJECTED). The rules (rounding half away from zero, closes, the greedy repair and
    its last resort, the sleeve split) are those of the module docstring. ``ValueError`` on shapes,
    non-finite values, ``unit_value <= 0``, ``lot_size`` not a whole number >= 1, ``nav <= 0``.
    """
    weights = np.asarray(weights, dtype=float)
    unit_value = np.asarray(unit_value, dtype=float)
    lot = np.asarray(lot_size, dtype=float)
    _check(x, weights, nav, unit_value, lot, min_trade_value, max_steps)
    G = factor_loadings(x.exposures, x.factor_covariance)
    book = _Book(x, G)
    w0, w_solver = book.w0, weights.sum(axis=1)
    z_solver = w_solver - w0
    held = w0 * nav / unit_value
    q_solver = z_solver * nav / unit_value
    # a sale stops at the holding on long-only books, and for long holdings the solver keeps long
    limit = np.where(x.long_only | ((held > 0) & (w_solver >= -FEASIBILITY_TOLERANCE)), np.maximum(held, 0.0), np.inf)
    min_lots = np.maximum(1.0, np.ceil(min_trade_value / (lot * unit_value) - 1e-9))

    # step 1: nearest lot (half away from zero), minimum size, no sale past the holding, closes
    # HALF_LOT_SLACK: a trade a float hair below a half lot (3.4999999 lots) still rounds away from zero
    q = lot * np.sign(q_solver) * np.floor(np.abs(q_solver) / lot + 0.5 + HALF_LOT_SLACK)
    dropped = (q != 0) & (np.abs(q) * unit_value < min_trade_value)
    q[dropped] = 0.0
    q = np.maximum(q, -limit)
    closing = (held != 0) & (np.abs(w_solver) <= FEASIBILITY_TOLERANCE)
    q[closing] = -held[closing]

    def closes(quantity: np.ndarray) -> np.ndarray:
        return (held != 0) & (quantity == -held)

    def trade(quantity: np.ndarray) -> np.ndarray:
        return np.where(closes(quantity), -w0, quantity * unit_value / nav)

    direction = np.where(q != 0, np.sign(q), np.where(np.abs(z_solver) > FEASIBILITY_TOLERANCE, np.sign(q_solver), 0.0))
    band = lot * min_lots

    steps_in_lots = np.array(STEP_LOTS, dtype=float)[:, None]

    def candidates(quantity: np.ndarray) -> np.ndarray:
        """(2m, n) quantities ``STEP_LOTS`` grid steps toward zero (rows 0..m-1, never past zero) and
        away from zero (rows m..2m-1); NaN: no such move."""
        up = lot * (np.floor(quantity / lot) + steps_in_lots)
        up = np.where(quantity < 0, np.minimum(up, 0.0), up)
        up = np.where((up < 0) & (up > -band), 0.0, np.where((up > 0) & (up < band), band, up))
        down = lot * (np.ceil(quantity / lot) - steps_in_lots)
        down = np.where(quantity > 0, np.maximum(down, 0.0), down)
        down = np.where((down > 0) & (down < band), 0.0, np.where((down < 0) & (down > -band), -band, down))
        down = np.where(down < -limit, np.where(quantity > -limit, -limit, np.nan), down)
        toward = np.where(quantity == 0, np.nan, np.where(direction > 0, down, up))
        away = np.where(direction > 0, up, down)
        out = np.concatenate([toward, away])
        out[:, direction == 0] = np.nan
        return out

    z = trade(q)
    found = violations(x, _split(x, weights, z, closes(q)), G)
    status, steps, forced, bumps = ROUNDED, 0, 0, 0
    step_limit = 4 * x.n + 100 if max_steps is None else max_steps
    factor = dict.fromkeys(CONSTRAINT_GROUPS, 1.0)
    shrink_only = np.zeros(x.n, dtype=bool)  # shrunk by the last resort: from then on only toward zero
    known_broken = True  # violations() of the current trades is not empty
    if found:
        status = REPAIRED
        while steps < step_limit:
            moves = candidates(q)
            moves[len(STEP_LOTS):, shrink_only] = np.nan
            dz = np.where(np.isnan(moves), np.nan, trade(np.nan_to_num(moves)) - z)
            now, scores, amounts = book.measure(z, dz, factor)
            best, pushed = scores.min(), False
            if best < now - TIE * (1.0 + now):
                # ties: the move that takes the trade least further from the solver's
                drift = np.abs(z + np.nan_to_num(dz) - z_solver) - np.abs(z - z_solver)
                kind, i = divmod(int(np.argmin(np.where(scores <= best + TIE * (1.0 + best), drift, np.inf))), x.n)
            elif not known_broken and not violations(x, _split(x, weights, z, closes(q)), G):
                break
            elif bumps < MAX_BUMPS and not forced and any(amount > 0 for amount in amounts.values()):
                known_broken = True
                # stuck: weigh the groups still broken double, so that a move trading them for a smaller
                # breach elsewhere becomes an improvement (the breakout of a local minimum)
                for group, amount in amounts.items():
                    factor[group] *= 2.0 if amount > 0 else 1.0
                bumps += 1
                continue
            else:
                # the last resort: the largest trade one grid step toward zero, and it never grows again
                size = np.where((q != 0) & (direction != 0), np.abs(z), -1.0)
                kind, i = 0, int(np.argmax(size))
                if size[i] < 0:
                    break
                shrink_only[i], pushed = True, True
                forced += 1
            q[i] = moves[kind, i]
            z = trade(q)
            steps += 1
            known_broken = False
            if scores[kind, i] <= 0 or pushed:
                if not violations(x, _split(x, weights, z, closes(q)), G):
                    break
                known_broken = True
    closed = closes(q)
    final = _split(x, weights, z, closed)
    left = violations(x, final, G)
    if left:
        status = REJECTED
    parts = [f"{np.count_nonzero(q)} trades, {int(closed.sum())} of them whole-holding closes"]
    if dropped.any():
        parts.append(f"{int(dropped.sum())} below the minimum trade value dropped")
    how = "".join([f"; broken groups weighted up {bumps} times" if bumps else "",
                   f"; {forced} moves forced toward zero" if forced else ""])
    if status == REPAIRED:
        parts.append(f"repaired in {steps} moves{how}")
    elif status == REJECTED:
        why = "step limit reached" if steps >= step_limit else "no move repairs it"
        parts.append(f"rejected after {steps} repair moves ({why}{how}): still breaks {', '.join(sorted(left))}")
        solver_broke = violations(x, weights, G)
        if solver_broke:
            parts.append(f"the solver's own weights already break {', '.join(sorted(solver_broke))}")
    return RoundedTrade(q + 0.0, final, status, left, steps, "; ".join(parts))  # + 0.0: no -0.0 shares
